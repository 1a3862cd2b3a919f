"""Backtests over history: drive `strategy.run`, replay fills in vectorbt, compute KPIs, report.

Rules, scores and fills come from `strategies/` unchanged: this module only calls
`strategy.run(panel, params_list)` and reads the RunResult. vectorbt carries the single-set
portfolio (research/portfolio.py: explicit fill prices, never its same-bar-close default).

Grids: `run_grid` runs N sets as N columns (in chunks of `chunk` sets, decisions not recorded) and
computes the metrics table from RunResult.equity/cash with vectorbt's returns accessor and numpy
(research/kpis.py), not from a vectorbt Portfolio over N x symbols columns, which is too heavy for
hundreds of sets over a year of minute bars. The single-set `backtest` uses the same KPI code, and
its vectorbt Portfolio is checked against the rules' own cash and equity to the cent.

CLI: `python -m research.backtest --mode default|relaxed [--start D] [--end D] [--symbols A,B]
[--params FILE] [--out DIR] [--llm off|recorded:FILE]` on the catalog (the bundled sample is written only into an empty one);
errors print one line.
Each run writes its own folder under --out (research/runs.py): report.html, orders.parquet,
decisions.parquet, params.toml, meta.json; `<out>/latest` points at the newest. Parameters: the
preset, then --params, then `TIERLAB_<FIELD>` environment variables (strategies.params.Params.load).
vectorbt and plotly are imported where used, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from research.runs import RunDir
from strategies import codes
from tierlab.cli import split_symbols
from tierlab.errors import ConfigError, DataError, TierlabError

if TYPE_CHECKING:  # numpy, pandas, numba, vectorbt and plotly load where used: --help answers at once
    import numpy as np
    import pandas as pd

    from data.bars import Panel
    from research.portfolio import Replay
    from strategies.base import RunResult, Strategy

SUMMARY_KEYS = (
    "total_return", "cagr", "sharpe", "sharpe_se", "sortino", "calmar", "max_drawdown", "n_trades", "win_rate",
    "profit_factor", "exposure", "turnover", "fees", "slippage_cost", "final_equity", "n_sessions",
)


@dataclass(eq=False)
class BacktestResult:
    """One parameter set's backtest: the RunResult, its vectorbt replay, KPIs and tidy frames."""

    strategy: str
    params: Any
    panel: Panel
    result: RunResult
    metrics: dict[str, float]
    signals: dict[str, float]
    hourly: pd.DataFrame
    trades: pd.DataFrame
    orders: pd.DataFrame
    decisions: pd.DataFrame
    seconds: float = 0.0
    risk_free: float = 0.0
    llm: dict[str, Any] = field(default_factory=dict)  # research.llm.llm_kpis: policy, note, counters
    _replay: Replay | None = field(default=None, repr=False)

    @property
    def replay(self) -> Replay:
        """The vectorbt replay of the fills, built on first use (vectorbt takes seconds to import)."""
        if self._replay is None:
            from research.portfolio import replay

            self._replay = replay(self.result, self.panel.close)
        return self._replay

    @property
    def portfolio(self) -> Any:
        """The vectorbt Portfolio (one group: this set)."""
        return self.replay.portfolio

    def suppression_table(self) -> pd.DataFrame:
        """Decision counts by reason with their share of generated signals (SPEC §4, §8)."""
        import pandas as pd

        counts = self.result.reason_counts[0]
        generated = max(int(counts.sum() - counts[codes.NOT_EVALUATED]), 1)
        rows = [(codes.DECISION_NAMES[c], int(counts[c]), counts[c] / generated, c in codes.SUPPRESSION_CODES)
                for c in range(1, len(counts)) if counts[c]]
        return pd.DataFrame(rows, columns=["reason", "count", "share", "suppression"])


@dataclass(eq=False)
class GridResult:
    """Many sets at once: `metrics` (one row per set) and `equity` (time x set)."""

    metrics: pd.DataFrame
    equity: pd.DataFrame
    params: list[Any]
    seconds: float = 0.0


def _params_dict(p: Any) -> dict[str, Any]:
    if hasattr(p, "model_dump"):
        return p.model_dump()
    if dataclasses.is_dataclass(p):
        return dataclasses.asdict(p)
    return dict(vars(p)) if hasattr(p, "__dict__") else {}


def _align(panel: Panel, result: RunResult) -> Panel:
    return panel if tuple(panel.symbols) == tuple(result.symbols) else panel.select(result.symbols)


def backtest(
    strategy: Strategy,
    panel: Panel,
    params: Any = None,
    *,
    events: pd.DataFrame | None = None,
    init_cash: float = 10_000.0,
    progress: bool = False,
    risk_free: float = 0.0,
    vectorbt: bool = True,
    llm: str | None = "off",
) -> BacktestResult:
    """Run one parameter set over `panel`, compute every KPI and (with `vectorbt`) replay its fills.

    `progress` shows a tqdm bar over the stages (rules, portfolio, KPIs) on stderr. With
    `vectorbt=False` the replay is left for first use of `.replay` (the CLI's report reads the
    rules' own equity, equal to the replay's to the cent, and so starts without vectorbt).
    `risk_free` is an annual rate for Sharpe and Sortino. `llm` is `off` (no review: today's run) or
    `recorded:FILE` (the LLM gate answers from a recorded-answers file, research/llm.py).
    """
    from tqdm.auto import tqdm

    from research.llm import llm_kpis, parse_policy, run_policy

    t0 = time.perf_counter()
    params = strategy.params if params is None else params
    kind, _ = parse_policy(llm)
    bar = tqdm(total=3, desc="rules", unit="stage", disable=not progress, leave=False)
    with bar:
        if kind == "off":
            result = strategy.run(panel, [params], events=events, init_cash=init_cash, record=True, progress=progress)
            llm_figs = llm_kpis(None, "off")
        else:
            result, llm_figs = run_policy(strategy, panel, params, events, llm, init_cash=init_cash)
        bar.update()
        bar.set_description("portfolio + KPIs")
        bt = evaluate(strategy.name, params, panel, result, risk_free=risk_free, vectorbt=vectorbt, llm=llm_figs)
        bar.update(2)
    bt.seconds = time.perf_counter() - t0
    return bt


def evaluate(strategy_name: str, params: Any, panel: Panel, result: RunResult, seconds: float = 0.0, *,
             risk_free: float = 0.0, vectorbt: bool = True, llm: dict[str, Any] | None = None) -> BacktestResult:
    """Compute every KPI and tidy frame of a one-set RunResult (and, with `vectorbt`, its replay).

    The backtest calls it on `strategy.run`'s result; the live runner's report on a RunResult built
    from the broker's fills and the runner's decisions, so both read the same way. `llm` (research.llm
    .llm_kpis) adds the LLM gate's counters to the signal KPIs and its policy to the report.
    """
    import numpy as np
    import pandas as pd

    from research import kpis
    from research.portfolio import replay

    panel = _align(panel, result)
    rp = replay(result, panel.close) if vectorbt else None
    trades = kpis.round_trips(result, panel.low, panel.high, panel.close)
    metrics = kpis.metrics(result, panel.low, panel.high, panel.close, trades=trades,
                           risk_free=risk_free).iloc[0].to_dict()
    for key in ("n_trades", "n_orders", "n_sessions"):
        metrics[key] = int(metrics[key])
    metrics["slippage_cost"] = kpis.slippage_cost(result, panel.open, 0)
    signals = kpis.signal_kpis(result, trades, 0)
    signals.update({k: v for k, v in (llm or {}).items() if k.startswith(("llm_", "skipped_llm_"))
                    and k not in ("llm_policy", "llm_note", "llm_calls")})
    hourly = kpis.hourly_kpis(result, trades, 0)
    sym = np.asarray(result.symbols, dtype=object)
    trades = trades.assign(
        symbol=sym[trades["col"]],
        entry_time=result.index[trades["entry_bar"]],
        exit_time=pd.DatetimeIndex([result.index[b] if b >= 0 else pd.NaT for b in trades["exit_bar"]]),
        exit_reason=[codes.ORDER_REASON_NAMES.get(int(r), "open") for r in trades["exit_reason"]],
    )
    decisions = result.decisions_frame(0) if result.decisions is not None else pd.DataFrame()
    return BacktestResult(
        strategy=strategy_name, params=params, panel=panel, result=result, metrics=metrics,
        signals=signals, hourly=hourly, trades=trades, orders=result.orders_frame(0), decisions=decisions,
        seconds=seconds, risk_free=risk_free, llm=dict(llm or {}), _replay=rp,
    )


def score_groups(strategy: Strategy, param_sets: Sequence[Any]) -> list[list[int]]:
    """Set indices grouped by score model (the strategy's SCORE_FIELDS), in first-seen order.

    Sets of one group share one score computation and one kernel call; without SCORE_FIELDS
    every set is its own group's member in the caller's order (a single group).
    """
    import sys as _sys

    fields = getattr(strategy, "score_fields", None) or getattr(
        _sys.modules.get(type(strategy).__module__), "SCORE_FIELDS", ())
    groups: dict[tuple, list[int]] = {}
    for k, p in enumerate(param_sets):
        groups.setdefault(tuple(repr(getattr(p, f, None)) for f in fields), []).append(k)
    return list(groups.values())


def run_grid(
    strategy: Strategy,
    panel: Panel,
    param_sets: Sequence[Any],
    *,
    events: pd.DataFrame | None = None,
    init_cash: float = 10_000.0,
    progress: bool = False,
    chunk: int = 128,
    llm: str | None = "off",
) -> GridResult:
    """Run N parameter sets as N columns and return one tidy metrics row per set plus equity curves.

    Sets run in chunks of at most `chunk` (bounded memory: 2 x T x chunk floats), decisions
    unrecorded; each chunk holds sets of one score model (`score_groups`), so scores are computed
    once per chunk and no chunk is split and merged again. Metrics come from the RunResult
    equity/cash and orders (see the module docstring for why not a vectorbt Portfolio), in the
    caller's set order. Parameters that differ between sets are added as columns of `metrics`.
    `llm`: `off`, or `recorded:FILE` for a single set (gate + kernel, research.llm.run_policy).
    """
    import numpy as np
    import pandas as pd

    from research import kpis
    from research.llm import parse_policy, run_policy

    t0 = time.perf_counter()
    param_sets = list(param_sets)
    if not param_sets:
        raise ConfigError("run_grid: param_sets is empty")
    llm_off = parse_policy(llm)[0] == "off"
    if not llm_off and len(param_sets) > 1:
        raise ConfigError(f"--llm {llm}: a grid of {len(param_sets)} sets shares one score computation, so it runs "
                          "with --llm off only; run recorded answers one set at a time")
    parts = [g[a : a + chunk] for g in score_groups(strategy, param_sets) for a in range(0, len(g), chunk)]
    tables, curves, order = [], [], []
    iterator: Any = parts
    if progress and len(parts) > 1:
        from tqdm.auto import tqdm

        iterator = tqdm(parts, desc="grid", unit="chunk")
    index = None
    keep = ["signals_generated", "suppressed_total", "actionable", "strong_signal_rate",
            "token_overflow_rate", "direction_lock_hits", "llm_calls"]
    for ks in iterator:
        if llm_off:
            result = strategy.run(panel, [param_sets[k] for k in ks], events=events, init_cash=init_cash,
                                  record=False, progress=False)
        else:  # one set: the gate's per-bar threshold needs the kernel's recorded llm_min_score
            result = run_policy(strategy, panel, param_sets[ks[0]], events, llm, init_cash=init_cash)[0]
        aligned = _align(panel, result)
        trades = kpis.round_trips(result, aligned.low, aligned.high, aligned.close)
        m = kpis.metrics(result, aligned.low, aligned.high, aligned.close, trades=trades)
        by_set = dict(tuple(trades.groupby("set", sort=False)))  # one pass, not one filter per set
        empty = trades.iloc[:0]
        sig = pd.DataFrame([kpis.signal_kpis(result, by_set.get(k, empty), k) for k in range(result.n_sets)])
        tables.append(pd.concat([m, sig[keep]], axis=1))
        curves.append(result.equity)
        order.extend(ks)
        index = result.index
    back = np.argsort(np.asarray(order))  # chunk order -> the caller's order
    metrics = pd.concat(tables, ignore_index=True).iloc[back].reset_index(drop=True)
    dicts = [_params_dict(p) for p in param_sets]
    for name in dicts[0]:
        values = [d.get(name) for d in dicts]
        if name not in metrics and all(np.isscalar(v) for v in values) and len(set(values)) > 1:
            metrics[name] = values
    equity = pd.DataFrame(np.hstack(curves)[:, back], index=index,
                          columns=pd.RangeIndex(len(param_sets), name="set"))
    return GridResult(metrics=metrics, equity=equity, params=param_sets, seconds=time.perf_counter() - t0)


# --- CLI -------------------------------------------------------------------------------------------


def summary_text(bt: BacktestResult) -> str:
    """The compact summary and suppression breakdown the CLI prints (units and n/a reasons as the report)."""
    import numpy as np

    from research import kpis

    reasons = kpis.nonfinite_reasons(bt.metrics, bt.signals)
    lines = [f"{bt.strategy}: {bt.panel.index[0].date()} .. {bt.panel.index[-1].date()}, "
             f"{len(bt.panel.symbols)} symbols, {len(bt.panel.index):,} bars, {bt.seconds:.1f} s"]
    width = 20
    for k in SUMMARY_KEYS:
        v = bt.metrics.get(k, np.nan)
        lines.append(f"  {k:<{width}}  {kpis.fmt_value(k, v, reasons.get(k))}")
    warn = kpis.short_sample_warning(int(bt.metrics.get("n_sessions", 0)))
    if warn:
        lines.append(f"  warning: {warn}")
    lines.append("  max_drawdown is bar-level (equity marked at every bar close)")
    lines.append("signals (SPEC §8)")
    for k in ("signals_generated", "actionable", "exit_signal", "evidence", "strong_signal_rate",
              "flip_flops", "flip_flop_rate", "direction_lock_hits", "token_overflow_rate", "llm_calls",
              "stop_out_rate", "mae_median", "mfe_median"):
        lines.append(f"  {k:<{width}}  {kpis.fmt_value(k, bt.signals.get(k, np.nan), reasons.get(k))}")
    if bt.llm:
        lines.append(f"LLM gate (SPEC §7): {bt.llm.get('llm_policy', 'off')}")
        for k, v in bt.llm.items():
            if k not in ("llm_policy", "llm_note"):
                shown = f"{v:.6f}" if k == "llm_cost" else kpis.fmt_value(k, v)  # cents hide one call's cost
                lines.append(f"  {k:<{width + 4}}  {shown}")
        if bt.llm.get("llm_note"):
            lines.append(f"  warning: {bt.llm['llm_note']}")
    lines.append("suppression breakdown")
    for row in bt.suppression_table().itertuples():
        lines.append(f"  {row.reason:<{width}}  {row.count:>8,}  {row.share:6.1%}")
    why = empty_run_reason(bt)
    if why:
        lines.append(f"no trades: {why}")
    return "\n".join(lines)


def empty_run_reason(bt: BacktestResult) -> str | None:
    """Why a run placed no order, in a sentence (None when it traded)."""
    if len(bt.orders):
        return None
    p = bt.params
    evaluated = set(getattr(p, "stocks", ()) or ())
    routed = {b.target for b in getattr(p, "baskets", ())}
    tradable = [s for s in bt.panel.symbols if s in evaluated or s in routed]
    if not tradable:
        role = {s: "a conflict partner / benchmark" for s in getattr(p, "other_etfs", ())}
        role.update({s: "an inverse ETF without its basket members" for s in getattr(p, "inverse_etfs", ())})
        who = ", ".join(f"{s} is only {role.get(s, 'outside the tiers')}" for s in bt.panel.symbols)
        return f"nothing in this universe is evaluated or routed to ({who}); add stocks to --symbols"
    counts = bt.result.reason_counts[0]
    if counts[codes.ACTIONABLE] == 0:
        top = bt.suppression_table().sort_values("count", ascending=False).head(3)
        return ("no signal passed every gate; most decisions were "
                + ", ".join(f"{r.reason} ({r.count:,})" for r in top.itertuples()))
    return "actionable signals were all refused at fill time (risk, cash or the session end)"


GLOSSARY = {name: text for name, text in (
    ("not_evaluated", "no fresh bar, not due by its tier's cadence, or warm-up"),
    ("token", "the tier's token bucket was empty: the evaluation was skipped (SPEC §2)"),
    ("below_cutoff", "|score| below the effective cutoff (SPEC §4.1)"),
    ("cooldown", "the same ticker signalled less than cooldown_s ago (SPEC §4.2)"),
    ("direction_lock", "the reverse of the ticker's last signal within direction_lock_s (SPEC §4.3)"),
    ("risk", "the risk manager refused: concurrent risk, daily loss, positions, exposure (SPEC §5)"),
    ("daily_cap", "the per-ticker or global daily cap was reached (SPEC §4.5)"),
    ("duplicate", "the same signal inside the idempotency window, not counted twice (SPEC §4.5)"),
    ("etf_lock", "an order in this ETF less than etf_lock_s ago (SPEC §6)"),
    ("conflict", "the conflicting side of a pair is held (SPEC §6)"),
    ("in_position", "already holding the symbol: no pyramiding"),
    ("evidence", "a negative score on a stock not held: basket evidence, never a short (SPEC §6)"),
    ("actionable", "passed every gate: an entry intent"),
    ("exit_signal", "an actionable signal against a held position: an exit (SPEC §5b)"),
    ("session_end", "inside the flatten window before the close: no new entries (SPEC §5b)"),
    ("entry / basket_entry", "orders: a stock bought / an inverse ETF bought by a basket (SPEC §6)"),
    ("stop / take_profit", "orders: the bracket's stop or take-profit filled inside a bar (SPEC §5b)"),
    ("flatten / max_hold / basket_exit", "orders: session-end flatten, holding-time limit, basket exit"),
)}


def glossary_text() -> str:
    """The reason codes in a few lines (the CLI's --help epilog and the report's glossary)."""
    return "reason codes:\n" + "\n".join(f"  {k:<34} {v}" for k, v in GLOSSARY.items())


def restrict_universe(params: Any, symbols: Sequence[str]) -> Any:
    """Params whose universe is cut down to `symbols`: tiers filtered, baskets keep their members in
    `symbols` (and are dropped without their inverse ETF), conflict pairs kept only when both sides are."""
    keep = set(symbols)
    outside = [s for s in symbols if s not in params.universe]
    if outside:
        raise ConfigError(f"--symbols: {', '.join(outside)} not in the params' universe ({', '.join(params.universe)})")
    tiers = {f: tuple(s for s in getattr(params, f) if s in keep)
             for f in ("tier_a", "tier_b", "tier_bench", "inverse_etfs", "other_etfs")}
    baskets = []
    for b in params.baskets:
        members = tuple(m for m in b.members if m in keep)
        if b.target in keep and members:
            baskets.append({**b.model_dump(), "members": members, "min_signals": min(b.min_signals, len(members))})
    conflicts = tuple(pair for pair in params.conflicts if set(pair) <= keep)
    return params.replace(**tiers, baskets=tuple(baskets), conflicts=conflicts)


def _env_mode() -> str:
    """The preset when neither --mode nor --params names one: TIERLAB_MODE, else default."""
    import os

    return os.environ.get("TIERLAB_MODE", "").strip() or "default"


def run_job(mode: str | None = None, start: str | None = None, end: str | None = None,
            symbols: str | Sequence[str] | None = None, params_file: str | None = None, out: str = "reports",
            risk_free: float = 0.0, argv: Sequence[str] | None = None,
            llm: str | None = "off") -> tuple[BacktestResult, Path]:
    """The `make backtest` job: sample catalog -> panel -> backtest -> summary, HTML, parquet files.

    Parameters: preset, then `params_file`, then `TIERLAB_<FIELD>` environment variables. The run's
    files go to their own folder under `out` (research/runs.py); returns the report's path. `llm`:
    `off` or `recorded:FILE` (checked before any bars are read).
    """
    import pandas as pd

    from data.catalog import Catalog
    from data.sample import ensure_sample
    from research.llm import parse_policy
    from strategies.params import Params
    from strategies.tiered_basket import TieredBasketStrategy

    parse_policy(llm)  # a bad --llm is one line before the catalog is touched
    params = Params.load(mode or (None if params_file else _env_mode()), params_file)  # preset, file, TIERLAB_*
    symbols = ",".join(split_symbols(symbols)) if symbols is not None else None
    mode = params.mode
    catalog = Catalog()
    if not catalog.symbols():  # an empty catalog: the bundled sample, as `make backtest` promises
        ensure_sample(catalog)
    wanted = [s.strip().upper() for s in symbols.split(",") if s.strip()] if symbols else list(params.universe)
    if not wanted:
        raise ConfigError("--symbols is empty")
    # unknown symbols, gaps, synthetic bars mixed with real ones: refused in one line (data.catalog)
    lo, hi = (pd.Timestamp(d) for d in catalog.resolve_range(wanted, start, end))
    if symbols:
        params = restrict_universe(params, wanted)
    panel = catalog.read_panel(list(params.universe), lo.date(), hi.date())
    if len(panel.index) == 0:
        raise DataError(f"no trading sessions between {lo.date()} and {hi.date()}")
    strategy = TieredBasketStrategy(params)
    with compile_notice():
        bt = backtest(strategy, panel, params, events=catalog.read_events(lo.date(), hi.date()),
                      progress=len(panel.index) > 20_000, risk_free=risk_free, vectorbt=False, llm=llm)
    return bt, write_run(bt, catalog, out, argv=argv)


def provenance(catalog: Any, symbols: Sequence[str], start: Any, end: Any) -> dict[str, str]:
    """Where each symbol's bars came from: `synthetic sample` or `real (<origin>)`, from the catalog."""
    from data.catalog import is_synthetic

    out: dict[str, str] = {}
    for s in symbols:
        origins = set(catalog.origins(s, start, end).values())  # the catalog records each day's origin
        synthetic = {o for o in origins if is_synthetic(o)}
        real = sorted(origins - synthetic)
        out[s] = ("synthetic sample" if synthetic and not real else
                  f"real ({', '.join(real)})" if real and not synthetic else
                  f"mixed: synthetic and {', '.join(real)}" if real else "unknown")
    return out


def write_run(bt: BacktestResult, catalog: Any = None, out: str | Path = "reports", *,
              argv: Sequence[str] | None = None, benchmark_close: np.ndarray | None = None) -> Path:
    """Write a backtest's own run folder (report.html, orders/decisions parquet, params.toml, meta.json)."""
    import numpy as np

    from research.report import write_report

    lo, hi = bt.panel.index[0].tz_convert("America/New_York"), bt.panel.index[-1].tz_convert("America/New_York")
    mode = getattr(bt.params, "mode", None)
    extra: dict[str, Any] = {"risk_free": bt.risk_free}
    if bt.llm.get("llm_policy", "off") != "off":  # off runs keep today's settings (and hash)
        extra["llm"] = bt.llm["llm_policy"]
    run = RunDir.create("backtest", mode=mode, start=lo, end=hi, params=bt.params, symbols=bt.panel.symbols,
                        root=out, extra=extra, argv=argv)
    prov = provenance(catalog, bt.panel.symbols, lo.date(), hi.date()) if catalog is not None else {}
    if benchmark_close is None and catalog is not None and "QQQ" not in bt.panel.symbols:
        try:  # QQQ as a benchmark even when --symbols left it out of the universe
            benchmark_close = catalog.read_panel(["QQQ"], lo.date(), hi.date()).close[:, 0]
        except DataError:  # no QQQ in this catalog: the report says the benchmark is missing
            benchmark_close = None
    run.meta.update({"provenance": prov, "strategy": bt.strategy})
    html = write_report(bt, run.path / "report.html",
                        title=f"tierlab backtest — {mode} — {lo.date()} .. {hi.date()}",
                        provenance=prov, meta=run.meta, qqq_close=benchmark_close, plotly_dir=out)
    bt.orders.to_parquet(run.path / "orders.parquet", index=False)
    bt.decisions.to_parquet(run.path / "decisions.parquet", index=False)
    run.finish(["report.html", "orders.parquet", "decisions.parquet"],
               {"n_orders": len(bt.orders), "n_trades": int(bt.metrics.get("n_trades", 0)),
                "total_return": float(bt.metrics.get("total_return", np.nan))})
    return html


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2) like every other bad request."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


class compile_notice:
    """On a cold numba cache, say that kernels are compiling and show progress on stderr.

    The first run after install or a kernel edit compiles every kernel (20-40 s); later runs load
    them from the cache. Progress is the number of kernels cached so far and the seconds elapsed.
    """

    def __init__(self, stream: Any = None, every_s: float = 2.0) -> None:
        import os

        self.dir = Path(os.environ.get("NUMBA_CACHE_DIR", ""))
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.cold = not self.dir.is_dir() or len(list(self.dir.rglob("*.nbi"))) < 4
        self._stop: Any = None

    def _count(self) -> int:
        return len(list(self.dir.rglob("*.nbc"))) if self.dir.is_dir() else 0

    def _tick(self) -> None:
        t0 = time.monotonic()
        tty = getattr(self.stream, "isatty", lambda: False)()
        while not self._stop.wait(self.every_s):
            msg = f"  compiling kernels: {self._count()} cached, {time.monotonic() - t0:.0f} s"
            print(f"\r{msg}" if tty else msg, end="" if tty else "\n", file=self.stream, flush=True)
        if tty:
            print(file=self.stream)

    def __enter__(self) -> compile_notice:
        if self.cold:
            import threading

            print(f"first run: compiling numba kernels into {self.dir} (once per install or kernel edit, "
                  "about 20-40 s; later runs start at once)", file=self.stream, flush=True)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=1)
            print(f"kernels compiled and cached ({self._count()} files)", file=self.stream, flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments, every one with its help text (and the reason-code glossary below them)."""
    ap = _Parser(prog="python -m research.backtest", description=__doc__.splitlines()[0],
                 epilog=glossary_text() + "\n\nenvironment: TIERLAB_<FIELD>=value overrides any parameter "
                 "(e.g. TIERLAB_COOLDOWN_S=600); TIERLAB_HOME picks the catalog.",
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("default", "relaxed"),
                    help="preset (default: default, or the mode named in --params)")
    ap.add_argument("--start", help="first session date, YYYY-MM-DD (default: the catalog's common range)")
    ap.add_argument("--end", help="last session date, inclusive (default: the catalog's common range)")
    ap.add_argument("--symbols", nargs="+", metavar="SYM",
                    help="symbols, by commas or spaces (NVDA,AMD or NVDA AMD): the universe (tiers, baskets, "
                         "conflict pairs) is cut down to them")
    ap.add_argument("--params", help="TOML file of parameters (overrides the mode's preset)")
    ap.add_argument("--risk-free", type=float, default=0.0, metavar="RATE",
                    help="annual risk-free rate for Sharpe and Sortino, e.g. 0.04 (default 0)")
    ap.add_argument("--out", default="reports",
                    help="parent of the run folders (default: reports); each run writes its own folder")
    ap.add_argument("--llm", default="off", metavar="off|recorded:FILE",
                    help="LLM gate (SPEC §7): off (default, no review) or recorded:FILE, answers replayed from a "
                         "recorded-answers file (python -m research.llm record, or a live session's)")
    ap.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the job, print the summary; a bad request prints one line and exits 2."""
    args = build_parser().parse_args(argv)
    try:
        bt, html = run_job(args.mode, args.start, args.end, args.symbols, args.params, args.out,
                           risk_free=args.risk_free, argv=None if argv is None else ["research.backtest", *argv],
                           llm=args.llm)
    except (TierlabError, KeyError, ValueError, FileNotFoundError) as exc:
        if args.debug:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(summary_text(bt))
    print(f"report: {html}")
    print(f"run folder: {html.parent} (orders.parquet, decisions.parquet, params.toml, meta.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
