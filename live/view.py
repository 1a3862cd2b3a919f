"""What a person watches: a rich live table per ticker (score, tier, last decision), tokens left,
positions, P&L and the SPEC §5 risk summary; `summary_text` is the plain form `status` prints.
"""

from __future__ import annotations

from typing import Any

from tierlab.log import get_logger

log = get_logger(__name__)


def summary_text(s: dict[str, Any]) -> str:
    """The status summary as aligned lines."""
    risk = s.get("risk", {})
    lines = [f"time {s.get('time')}  mode {s.get('mode')}  equity {s.get('equity', 0):,.2f}  "
             f"P&L {s.get('pnl', 0):+,.2f}  cash {s.get('cash', 0):,.2f}" + ("  KILLED" if s.get("killed") else "")]
    lines.append("risk   " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in risk.items()))
    lines.append("tokens " + "  ".join(f"{k}={v}" for k, v in s.get("tokens", {}).items()))
    lines.append("positions " + (", ".join(f"{k} {v:g}" for k, v in s.get("positions", {}).items()) or "none"))
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
        from rich.table import Table

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
        if summary:
            table.caption = summary_text(summary).splitlines()[0]
        self.live.update(table)

    def close(self) -> None:
        """Stop redrawing."""
        self.live.stop()
