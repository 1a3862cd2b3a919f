"""What a person watches: a rich live table per ticker (score, tier, last decision), tokens left,
positions, P&L, the SPEC §5 risk summary and the LLM gate's counters (SPEC §7); `summary_text` is the
plain form `status` prints.
"""

from __future__ import annotations

from typing import Any

from tierlab.log import get_logger

log = get_logger(__name__)


def llm_text(c: dict[str, Any] | None) -> str:
    """The LLM gate's figures (live.llm.read_counters) in three lines of under 80 columns; None: the gate is off."""
    if not c:
        return "llm    off (needs OPENAI_BASE_URL and TIERLAB_LLM_MODEL; or no bar decided yet)"
    cur = c.get("currency") or "USD"
    skips = " ".join(f"{k.removeprefix('llm_')}={v}" for k, v in (c.get("skips") or {}).items())
    return "\n".join([
        f"llm    calls {c.get('calls', 0)}  answers {c.get('answers', 0)}  cache hits {c.get('cache_hits', 0)}  "
        f"tokens {c.get('tokens_in', 0)}/{c.get('tokens_out', 0)}  model {c.get('model')}",
        f"       skips {skips}",
        f"       cost {c.get('cost', 0.0):.6f} {cur}  day {c.get('day') or '-'} {c.get('calls_day', 0)}/"
        f"{c.get('daily_cap', 0)} calls  month {c.get('month') or '-'} {c.get('spent_month', 0.0):.6f}/"
        f"{c.get('monthly_budget', 0.0):g}"])


def summary_text(s: dict[str, Any]) -> str:
    """The status summary as aligned lines."""
    risk = s.get("risk", {})
    lines = [f"time {s.get('time')}  mode {s.get('mode')}  equity {s.get('equity', 0):,.2f}  "
             f"P&L {s.get('pnl', 0):+,.2f}  cash {s.get('cash', 0):,.2f}" + ("  KILLED" if s.get("killed") else "")]
    lines.append("risk   " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in risk.items()))
    lines.append("tokens " + "  ".join(f"{k}={v}" for k, v in s.get("tokens", {}).items()))
    lines.append("positions " + (", ".join(f"{k} {v:g}" for k, v in s.get("positions", {}).items()) or "none"))
    if "llm" in s:
        lines.append(llm_text(s["llm"]))
    for sym, t in (s.get("tickers") or {}).items():
        score = "   -  " if t["score"] is None else f"{t['score']:+.3f}"
        lines.append(f"  {sym:<6} {t['tier']:<5} {score}  {t['decision']}")
    return "\n".join(lines)


class TerminalView:
    """A rich Live table redrawn after every decided minute (stderr keeps the structured logs)."""

    def __init__(self, mode: str) -> None:
        from rich.console import Console
        from rich.live import Live

        self.mode = mode
        self.console = Console()
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.live.start()
        self.last: dict[str, str] = {}

    def update(self, minute: Any, summary: dict[str, Any] | None = None) -> None:
        """Redraw with the newest minute."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        from strategies import codes as C

        table = Table(title=f"tierlab live — {self.mode} — {minute.t.tz_convert('America/New_York'):%Y-%m-%d %H:%M} NY")
        for c in ("ticker", "score", "last decision"):
            table.add_column(c)
        for sig in minute.signals:
            if sig.get("kind") != "protect":
                self.last[sig["symbol"]] = f"{sig['reason']} @ {minute.t.tz_convert('America/New_York'):%H:%M}"
        names = getattr(self, "symbols", None) or sorted(self.last)
        for j, sym in enumerate(names):
            sc = minute.scores[j] if j < len(minute.scores) else float("nan")
            table.add_row(sym, "-" if sc != sc else f"{sc:+.3f}", self.last.get(sym, C.DECISION_NAMES[0]))
        shown: Any = table
        if summary:
            table.caption = summary_text(summary).splitlines()[0]
            if "llm" in summary:  # below the table, at full width
                shown = Group(table, Text(llm_text(summary["llm"])))
        self.live.update(shown)

    def close(self) -> None:
        """Stop redrawing."""
        self.live.stop()
