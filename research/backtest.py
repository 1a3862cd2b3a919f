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
[--params FILE] [--out DIR]` on the bundled sample (built on first use); errors print one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.bars import Panel
from research import kpis
from research.portfolio import Replay, replay
from strategies import codes
from strategies.base import RunResult, Strategy
from tierlab.errors import ConfigError, DataError, TierlabError

SUMMARY_KEYS = (
    "total_return", "cagr", "sharpe", "sortino", "calmar", "max_drawdown", "n_trades", "win_rate",
    "profit_factor", "exposure", "turnover", "fees", "final_equity",
)


@dataclass(eq=False)
class BacktestResult:
    """One parameter set's backtest: the RunResult, its vectorbt replay, KPIs and tidy frames."""

    strategy: str
    params: Any
    panel: Panel
    result: RunResult
    replay: Replay
    metrics: dict[str, float]
    signals: dict[str, float]
    hourly: pd.DataFrame
    trades: pd.DataFrame
    orders: pd.DataFrame
    decisions: pd.DataFrame
    seconds: float = 0.0

    @property
    def portfolio(self) -> Any:
        """The vectorbt Portfolio (one group: this set)."""
        return self.replay.portfolio

    def suppression_table(self) -> pd.DataFrame:
        """Decision counts by reason with their share of generated signals (SPEC §4, §8)."""
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
) -> BacktestResult:
    """Run one parameter set over `panel`, replay its fills in vectorbt and compute every KPI.

    `progress` shows a tqdm bar over the stages (rules, portfolio, KPIs) on stderr.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    params = strategy.params if params is None else params
    bar = tqdm(total=3, desc="rules", unit="stage", disable=not progress, leave=False)
    with bar:
        result = strategy.run(panel, [params], events=events, init_cash=init_cash, record=True, progress=progress)
        bar.update()
        bar.set_description("portfolio + KPIs")
        bt = evaluate(strategy.name, params, panel, result)
        bar.update(2)
    bt.seconds = time.perf_counter() - t0
    return bt


def evaluate(strategy_name: str, params: Any, panel: Panel, result: RunResult, seconds: float = 0.0) -> BacktestResult:
    """Replay a one-set RunResult in vectorbt and compute every KPI and tidy frame.

    The backtest calls it on `strategy.run`'s result; the live runner's report on a RunResult built
    from the broker's fills and the runner's decisions, so both read the same way.
    """
    panel = _align(panel, result)
    rp = replay(result, panel.close)
    trades = kpis.round_trips(result, panel.low, panel.high, panel.close)
    metrics = kpis.metrics(result, panel.low, panel.high, panel.close, trades=trades).iloc[0].to_dict()
    for key in ("n_trades", "n_orders"):
        metrics[key] = int(metrics[key])
    signals = kpis.signal_kpis(result, trades, 0)
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
        strategy=strategy_name, params=params, panel=panel, result=result, replay=rp, metrics=metrics,
        signals=signals, hourly=hourly, trades=trades, orders=result.orders_frame(0), decisions=decisions,
        seconds=seconds,
    )


def run_grid(
    strategy: Strategy,
    panel: Panel,
    param_sets: Sequence[Any],
    *,
    events: pd.DataFrame | None = None,
    init_cash: float = 10_000.0,
    progress: bool = False,
    chunk: int = 64,
) -> GridResult:
    """Run N parameter sets as N columns and return one tidy metrics row per set plus equity curves.

    Sets run in chunks of `chunk` (bounded memory), decisions unrecorded; metrics come from the
    RunResult equity/cash and orders (see the module docstring for why not a vectorbt Portfolio).
    Parameters that differ between sets are added as columns of `metrics`.
    """
    t0 = time.perf_counter()
    param_sets = list(param_sets)
    if not param_sets:
        raise ConfigError("run_grid: param_sets is empty")
    tables, curves = [], []
    starts = range(0, len(param_sets), chunk)
    if progress and len(param_sets) > chunk:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="grid", unit="chunk")
    index = None
    for a in starts:
        part = param_sets[a : a + chunk]
        result = strategy.run(panel, part, events=events, init_cash=init_cash, record=False, progress=False)
        aligned = _align(panel, result)
        trades = kpis.round_trips(result, aligned.low, aligned.high, aligned.close)
        m = kpis.metrics(result, aligned.low, aligned.high, aligned.close, trades=trades)
        sig = pd.DataFrame([kpis.signal_kpis(result, trades, k) for k in range(result.n_sets)])
        keep = ["signals_generated", "suppressed_total", "actionable", "strong_signal_rate",
                "token_overflow_rate", "direction_lock_hits", "llm_calls"]
        tables.append(pd.concat([m, sig[keep]], axis=1))
        curves.append(result.equity)
        index = result.index
    metrics = pd.concat(tables, ignore_index=True)
    dicts = [_params_dict(p) for p in param_sets]
    for name in dicts[0]:
        values = [d.get(name) for d in dicts]
        if name not in metrics and all(np.isscalar(v) for v in values) and len(set(values)) > 1:
            metrics[name] = values
    equity = pd.DataFrame(np.hstack(curves), index=index, columns=pd.RangeIndex(len(param_sets), name="set"))
    return GridResult(metrics=metrics, equity=equity, params=param_sets, seconds=time.perf_counter() - t0)


# --- CLI -------------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        return "n/a" if not np.isfinite(v) else f"{v:,.4f}"
    return str(v)


def summary_text(bt: BacktestResult) -> str:
    """The compact summary and suppression breakdown the CLI prints."""
    lines = [f"{bt.strategy}: {bt.panel.index[0].date()} .. {bt.panel.index[-1].date()}, "
             f"{len(bt.panel.symbols)} symbols, {len(bt.panel.index):,} bars, {bt.seconds:.1f} s"]
    width = 20
    lines += [f"  {k:<{width}}  {_fmt(bt.metrics.get(k, np.nan))}" for k in SUMMARY_KEYS]
    lines.append("signals (SPEC §8)")
    for k in ("signals_generated", "actionable", "exit_signal", "evidence", "strong_signal_rate",
              "flip_flops", "flip_flop_rate", "direction_lock_hits", "token_overflow_rate", "llm_calls",
              "stop_out_rate", "mae_median", "mfe_median"):
        lines.append(f"  {k:<{width}}  {_fmt(bt.signals.get(k, np.nan))}")
    lines.append("suppression breakdown")
    for row in bt.suppression_table().itertuples():
        lines.append(f"  {row.reason:<{width}}  {row.count:>8,}  {row.share:6.1%}")
    return "\n".join(lines)


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


def _check_range(catalog: Any, symbols: Sequence[str], start: pd.Timestamp, end: pd.Timestamp) -> None:
    known = set(catalog.symbols())
    unknown = [s for s in symbols if s not in known]
    if unknown:
        raise DataError(f"unknown symbol(s) {', '.join(unknown)}; catalog has {', '.join(sorted(known))}")
    if start > end:
        raise ConfigError(f"empty range: --start {start.date()} is after --end {end.date()}")
    for s in symbols:
        first, last = catalog.range(s)
        if start.date() < pd.Timestamp(first).date() or end.date() > pd.Timestamp(last).date():
            raise DataError(f"{s}: range {start.date()} .. {end.date()} is outside the catalog's "
                            f"{pd.Timestamp(first).date()} .. {pd.Timestamp(last).date()}")


def run_job(mode: str | None = None, start: str | None = None, end: str | None = None,
            symbols: str | None = None, params_file: str | None = None, out: str = "reports") -> tuple[BacktestResult, Path]:
    """The `make backtest` job: sample catalog -> panel -> backtest -> summary, HTML, parquet files."""
    from data.sample import ensure_sample
    from research.report import write_report
    from strategies.params import Params
    from strategies.tiered_basket import TieredBasketStrategy

    params = Params.from_toml(params_file, mode=mode) if params_file else Params.preset(mode or "default")
    mode = params.mode
    catalog = ensure_sample()
    wanted = [s.strip().upper() for s in symbols.split(",") if s.strip()] if symbols else list(params.universe)
    if not wanted:
        raise ConfigError("--symbols is empty")
    known = set(catalog.symbols())
    ranges = [catalog.range(s) for s in wanted if s in known]
    lo = pd.Timestamp(start) if start else max(pd.Timestamp(r[0]) for r in ranges) if ranges else None
    hi = pd.Timestamp(end) if end else min(pd.Timestamp(r[1]) for r in ranges) if ranges else None
    if lo is not None and lo.tz is not None:
        lo = lo.tz_convert("America/New_York").tz_localize(None)
    if hi is not None and hi.tz is not None:
        hi = hi.tz_convert("America/New_York").tz_localize(None)
    _check_range(catalog, wanted, lo or pd.Timestamp(0), hi or pd.Timestamp(0))
    if symbols:
        params = restrict_universe(params, wanted)
    panel = catalog.read_panel(list(params.universe), lo.date(), hi.date())
    if len(panel.index) == 0:
        raise DataError(f"no trading sessions between {lo.date()} and {hi.date()}")
    strategy = TieredBasketStrategy(params)
    bt = backtest(strategy, panel, params, events=catalog.read_events(lo.date(), hi.date()),
                  progress=len(panel.index) > 20_000)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    html = out_dir / f"backtest-{mode}-{lo.date()}_{hi.date()}.html"
    write_report(bt, html, title=f"tierlab backtest — {mode} — {lo.date()} .. {hi.date()}")
    bt.orders.to_parquet(out_dir / "orders.parquet", index=False)
    bt.decisions.to_parquet(out_dir / "decisions.parquet", index=False)
    return bt, html


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2) like every other bad request."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the job, print the summary; a bad request prints one line and exits 2."""
    ap = _Parser(prog="python -m research.backtest", description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("default", "relaxed"),
                    help="preset (default: default, or the mode named in --params)")
    ap.add_argument("--start", help="first session date (default: the catalog's common range)")
    ap.add_argument("--end", help="last session date, inclusive")
    ap.add_argument("--symbols", help="comma-separated symbols: the universe (tiers, baskets, conflict pairs) is cut down to them")
    ap.add_argument("--params", help="TOML file of parameters (overrides the mode's preset)")
    ap.add_argument("--out", default="reports", help="output directory (default: reports)")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    args = ap.parse_args(argv)
    try:
        bt, html = run_job(args.mode, args.start, args.end, args.symbols, args.params, args.out)
    except (TierlabError, KeyError, ValueError, FileNotFoundError) as exc:
        if args.debug:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(summary_text(bt))
    print(f"report: {html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
