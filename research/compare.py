"""Modes side by side on replayed sessions (SPEC §8): per-session KPIs, differences with bootstrap
confidence intervals across sessions, a verdict per KPI, per-hour tables and the trigger timeline.

Every figure is computed from one run's *frames* (orders and decisions in the backtest's schema)
plus the bars, so a vectorized run and a live replay (`--from-live DIR`, the runner's
orders.parquet / decisions.parquet) go through the same code and give the same table.

CLI: `python -m research.compare --modes default,relaxed [--params A.toml,B.toml] --start D --end D`.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `--help` and a bad flag answer before numpy and pandas load
    from research.compare_cli import build_parser as _early_parser

    _early_parser().parse_args()

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.bars import Panel
from data.calendar import ny_days
from research import kpis
from research.runs import RunDir
from strategies import codes
from strategies.base import ORDER_DTYPE, RunResult

NY = "America/New_York"
# KPI -> +1 when higher is better, -1 when lower is better, 0 when neither (a count to read).
KPI_SENSE: dict[str, int] = {
    "pnl": 1, "return": 1, "max_drawdown": 1, "n_trades": 0, "win_rate": 1, "stop_out_rate": -1,
    "mae_median": 1, "mfe_median": 1, "signals_generated": 0, "suppressed_total": 0,
    **{f"suppressed_{codes.DECISION_NAMES[c]}": 0 for c in codes.SUPPRESSION_CODES},
    "actionable": 0, "strong_signal_rate": 1, "flip_flops": -1, "flip_flops_per_10min": -1,
    "flip_flop_rate": -1, "direction_lock_hits": 0, "token_overflow_rate_A": -1,
    "token_overflow_rate_B": -1, "token_overflow_rate_Reserve": -1, "reserve_fallbacks": 0,
    "llm_calls": 0,
}
TOKEN_COLUMNS = ("wants_a", "wants_b", "wants_reserve", "overflows_a", "overflows_b", "overflows_reserve",
                 "reserve_fallbacks")


@dataclass(eq=False)
class ModeRun:
    """One mode's replay as the comparison sees it: its frames, its bars and its parameters."""

    label: str
    params: Any
    orders: pd.DataFrame
    decisions: pd.DataFrame
    panel: Panel
    init_cash: float = 10_000.0
    triggers: pd.DataFrame = field(default_factory=pd.DataFrame)
    tokens: pd.DataFrame = field(default_factory=pd.DataFrame)  # per bar: TOKEN_COLUMNS, indexed by bar time


@dataclass(eq=False)
class Comparison:
    """The outputs: per-session KPIs (long), per-hour KPIs (long), differences with CIs, triggers."""

    sessions: pd.DataFrame
    hourly: pd.DataFrame
    table: pd.DataFrame
    equity: pd.DataFrame
    triggers: pd.DataFrame
    baseline: str


# --- frames -> a one-set RunResult -------------------------------------------------------------


def result_from_frames(run: ModeRun) -> RunResult:
    """Rebuild a one-set RunResult (orders, equity, cash, decisions, scores) from a run's frames.

    Equity is cash plus positions marked at each symbol's last known close, as the kernel marks it.
    """
    panel = run.panel
    index, symbols = panel.index, tuple(panel.symbols)
    col = {s: j for j, s in enumerate(symbols)}
    T, N = len(index), len(symbols)
    o = run.orders
    unknown = sorted(set(o["symbol"]) - set(col)) if len(o) else []
    if unknown:
        raise ValueError(f"orders name symbol(s) {', '.join(unknown)} that the bars do not have")
    orders = np.zeros(len(o), dtype=ORDER_DTYPE)
    if len(o):
        orders["bar"] = index.get_indexer(pd.DatetimeIndex(o["time"]))
        orders["decision_bar"] = index.get_indexer(pd.DatetimeIndex(o["decision_time"]))
        if (orders["bar"] < 0).any():
            raise ValueError("orders have fill times that are not bars of the replayed sessions")
        orders["col"] = [col[s] for s in o["symbol"]]
        orders["side"] = np.where(o["side"].to_numpy() == "buy", 1, -1)
        orders["qty"] = o["qty"].to_numpy(float)
        orders["price"] = o["price"].to_numpy(float)
        orders["fees"] = o["fees"].to_numpy(float)
        names = {v: k for k, v in codes.ORDER_REASON_NAMES.items()}
        orders["reason"] = [names.get(r, 0) for r in o["reason"]]
    flow = np.zeros(T)
    shares = np.zeros((T, N))
    np.add.at(flow, orders["bar"], -orders["side"] * orders["qty"] * orders["price"] - orders["fees"])
    np.add.at(shares, (orders["bar"], orders["col"]), orders["side"] * orders["qty"])
    cash = run.init_cash + np.cumsum(flow)
    held = np.cumsum(shares, axis=0)
    last = pd.DataFrame(panel.close).ffill().fillna(0.0).to_numpy()
    equity = cash + (held * last).sum(axis=1)
    decisions = np.zeros((1, T, N), dtype=np.int8)
    scores = np.full((T, N), np.nan)
    d = run.decisions
    if len(d):
        t = index.get_indexer(pd.DatetimeIndex(d["time"]))
        j = np.array([col[s] for s in d["symbol"]], dtype=np.int64)
        reason = pd.Series(d["reason"]).map({n: i for i, n in enumerate(codes.DECISION_NAMES)}).to_numpy()
        decisions[0, t, j] = reason
        if "score" in d:
            scores[t, j] = d["score"].to_numpy(float)
    counts = np.bincount(decisions[0].ravel(), minlength=codes.N_DECISIONS)[None, :].astype(np.int64)
    return RunResult(index=index, symbols=symbols, init_cash=run.init_cash, orders=orders,
                     equity=equity[:, None], cash=cash[:, None], reason_counts=counts, decisions=decisions,
                     scores=scores, params=[run.params])


def _session_slices(index: pd.DatetimeIndex) -> list[tuple[pd.Timestamp, slice]]:
    days = ny_days(index).astype(np.int64)
    edges = np.flatnonzero(np.r_[True, days[1:] != days[:-1], True])
    return [(index[a].tz_convert(NY).normalize().tz_localize(None), slice(a, b)) for a, b in itertools.pairwise(edges)]


def _slice(result: RunResult, sl: slice, start_equity: float) -> RunResult:
    """The bars of one session as a RunResult of their own (orders re-based to the slice)."""
    o = result.orders
    o = o[(o["bar"] >= sl.start) & (o["bar"] < sl.stop)].copy()
    o["bar"] -= sl.start
    o["decision_bar"] = np.maximum(o["decision_bar"] - sl.start, 0)
    dec = result.decisions[:, sl]
    counts = np.bincount(dec[0].ravel(), minlength=codes.N_DECISIONS)[None, :].astype(np.int64)
    return RunResult(index=result.index[sl], symbols=result.symbols, init_cash=start_equity, orders=o,
                     equity=result.equity[sl], cash=result.cash[sl], reason_counts=counts, decisions=dec,
                     scores=None if result.scores is None else result.scores[sl], params=result.params)


def _tier_overflow(tokens: np.ndarray) -> dict[str, float]:
    """Token overflow per tier over some bars: evaluations that found no token / evaluations wanted
    (SPEC §2), from the kernel's per-bar counts (the numbers the 2 h rollback trigger reads)."""
    wants, over = tokens[:, :3].sum(axis=0), tokens[:, 3:6].sum(axis=0)
    out = {f"token_overflow_rate_{tier}": float(over[i] / wants[i]) if wants[i] else 0.0
           for i, tier in enumerate(("A", "B", "Reserve"))}
    out["reserve_fallbacks"] = int(tokens[:, 6].sum())
    return out


def session_kpis(run: ModeRun) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Per-session KPIs, per-hour KPIs and the equity curve of one run (all from its frames)."""
    result = result_from_frames(run)
    panel = run.panel
    missing = [c for c in TOKEN_COLUMNS if c not in run.tokens]
    if missing:
        raise ValueError(f"{run.label}: per-bar token counts are missing ({', '.join(missing)})")
    tokens = run.tokens.reindex(result.index, fill_value=0)[list(TOKEN_COLUMNS)].to_numpy(float)
    rows, hours = [], []
    for day, sl in _session_slices(result.index):
        start_equity = float(result.equity[sl.start - 1, 0]) if sl.start else run.init_cash
        sub = _slice(result, sl, start_equity)
        low, high, close = panel.low[sl], panel.high[sl], panel.close[sl]
        trades = kpis.round_trips(sub, low, high, close)
        sig = kpis.signal_kpis(sub, trades, 0)
        eq = sub.equity[:, 0]
        peak = np.maximum(np.maximum.accumulate(eq), start_equity)
        closed = trades[~trades["is_open"]]
        minutes = (sl.stop - sl.start)
        row = {
            "session": day, "mode": run.label, "pnl": eq[-1] - start_equity, "return": eq[-1] / start_equity - 1.0,
            "max_drawdown": float((eq / peak - 1.0).min()), "n_trades": len(closed),
            "win_rate": float((closed["pnl"] > 0).mean()) if len(closed) else np.nan,
            **{k: sig[k] for k in ("stop_out_rate", "mae_median", "mfe_median", "signals_generated",
                                   "suppressed_total", "actionable", "strong_signal_rate", "flip_flops",
                                   "flip_flop_rate", "direction_lock_hits", "llm_calls")},
            **{f"suppressed_{codes.DECISION_NAMES[c]}": sig[f"suppressed_{codes.DECISION_NAMES[c]}"]
               for c in codes.SUPPRESSION_CODES},
            "flip_flops_per_10min": sig["flip_flops"] / (minutes / 10.0) if minutes else np.nan,
            **_tier_overflow(tokens[sl]),
        }
        rows.append(row)
        h = kpis.hourly_kpis(sub, trades, 0).reset_index()
        h.insert(0, "mode", run.label)
        h.insert(0, "session", day)
        hours.append(h)
    equity = pd.Series(result.equity[:, 0], index=result.index, name=run.label)
    return pd.DataFrame(rows), pd.concat(hours, ignore_index=True), equity


# --- differences and verdicts ----------------------------------------------------------------


def bootstrap_ci(diffs: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-session differences (sessions resampled)."""
    diffs = np.asarray(diffs, dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) < 2:
        return (np.nan, np.nan)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(n_boot, len(diffs)))].mean(axis=1)
    a = (1.0 - level) / 2.0
    return float(np.quantile(means, a)), float(np.quantile(means, 1.0 - a))


def verdict(kpi: str, lo: float, hi: float) -> str:
    """better / worse / higher / lower when the CI excludes 0, else not distinguishable."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "not distinguishable (too few sessions)"
    if lo <= 0.0 <= hi:
        return "not distinguishable"
    up = lo > 0.0
    sense = KPI_SENSE.get(kpi, 0)
    if sense == 0:
        return "higher" if up else "lower"
    return "better" if (up == (sense > 0)) else "worse"


def difference_table(sessions: pd.DataFrame, baseline: str, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """For every other mode and KPI: means, mean difference against `baseline`, CI, verdict."""
    wide = sessions.set_index(["session", "mode"])
    out = []
    base = wide.xs(baseline, level="mode")
    for mode in [m for m in sessions["mode"].unique() if m != baseline]:
        other = wide.xs(mode, level="mode").reindex(base.index)
        for kpi in KPI_SENSE:
            if kpi not in base:
                continue
            d = (other[kpi] - base[kpi]).to_numpy(float)
            lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed)
            ok = np.isfinite(d)
            out.append({
                "mode": mode, "baseline": baseline, "kpi": kpi, "baseline_mean": float(np.nanmean(base[kpi])) if base[kpi].notna().any() else np.nan,
                "mode_mean": float(np.nanmean(other[kpi])) if other[kpi].notna().any() else np.nan,
                "diff_mean": float(d[ok].mean()) if ok.any() else np.nan, "ci_low": lo, "ci_high": hi,
                "n_sessions": int(ok.sum()), "verdict": verdict(kpi, lo, hi),
            })
    return pd.DataFrame(out)


def compare_runs(runs: Sequence[ModeRun], n_boot: int = 2000, seed: int = 0) -> Comparison:
    """Compare runs (the first is the baseline) session by session."""
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"mode labels must differ, got {', '.join(labels)}")
    if len(runs) < 2:
        raise ValueError("a comparison needs at least two modes or params files")
    parts = [session_kpis(r) for r in runs]
    sessions = pd.concat([p[0] for p in parts], ignore_index=True)
    hourly = pd.concat([p[1] for p in parts], ignore_index=True)
    equity = pd.concat([p[2] for p in parts], axis=1)
    triggers = pd.concat([r.triggers.assign(mode=r.label) for r in runs if len(r.triggers)], ignore_index=True) \
        if any(len(r.triggers) for r in runs) else pd.DataFrame(columns=["mode", "time"])
    table = difference_table(sessions, labels[0], n_boot=n_boot, seed=seed)
    return Comparison(sessions=sessions, hourly=hourly, table=table, equity=equity, triggers=triggers,
                      baseline=labels[0])


# --- vectorized runs and live directories ------------------------------------------------------


def run_mode(label: str, params: Any, panel: Panel, events: pd.DataFrame | None = None,
             init_cash: float = 10_000.0) -> ModeRun:
    """Replay `panel` under `params` with the step kernel and keep its frames for the comparison."""
    from strategies.tiered_basket import TieredBasketStrategy

    strategy = TieredBasketStrategy(params)
    result = strategy.run(panel, [params], events=events, init_cash=init_cash, record=True)
    bars = panel if tuple(panel.symbols) == tuple(result.symbols) else panel.select(result.symbols)
    return ModeRun(label=label, params=params, orders=result.orders_frame(0), decisions=result.decisions_frame(0),
                   panel=bars, init_cash=init_cash, triggers=result.triggers_frame(0), tokens=token_frame(result))


def token_frame(result: RunResult, set_: int = 0) -> pd.DataFrame:
    """The kernel's per-bar token wants and overflows per tier (TOKEN_COLUMNS) indexed by bar time."""
    ex = result.extras
    counts = np.hstack([np.asarray(ex["token_wants_bar"][set_]), np.asarray(ex["token_overflows_bar"][set_]),
                        np.asarray(ex["reserve_fallbacks_bar"][set_])[:, None]])
    return pd.DataFrame(counts, index=result.index, columns=list(TOKEN_COLUMNS))


def load_live_dir(path: str, panel: Panel, init_cash: float = 10_000.0) -> ModeRun:
    """A live runner's output directory (orders, decisions and per-bar token parquet files, params.toml,
    triggers.parquet when any fired) as a ModeRun."""
    from strategies.params import Params

    d = Path(path)
    missing = [n for n in ("orders.parquet", "decisions.parquet", "tokens.parquet", "params.toml")
               if not (d / n).exists()]
    if missing:
        raise FileNotFoundError(f"{d}: not a live run directory (missing {', '.join(missing)})")
    params = Params.from_toml(d / "params.toml")
    bars = panel.select([s for s in panel.symbols if s in set(params.universe)])
    triggers = pd.read_parquet(d / "triggers.parquet") if (d / "triggers.parquet").exists() else pd.DataFrame()
    tokens = pd.read_parquet(d / "tokens.parquet")
    if "time" in tokens:
        tokens = tokens.set_index("time")
    return ModeRun(label=d.name, params=params, orders=pd.read_parquet(d / "orders.parquet"),
                   decisions=pd.read_parquet(d / "decisions.parquet"), panel=bars, init_cash=init_cash,
                   triggers=triggers, tokens=tokens)


# --- CLI -------------------------------------------------------------------------------------------


def _split(text: str | None) -> list[str]:
    return [s for s in (text or "").replace(",", " ").split() if s]


def run_job(modes: str | None, params_files: str | None, start: str | None, end: str | None,
            from_live: Sequence[str] = (), out: str = "reports", n_boot: int = 2000) -> tuple[Comparison, Path]:
    """`make compare`: replay the sessions under each mode / params file (or read live run
    directories), compare them and write report.html plus parquet tables into one directory."""
    from data.catalog import Catalog
    from data.sample import ensure_sample
    from research.compare_report import write_compare_report
    from strategies.params import Params

    labelled: list[tuple[str, Any]] = [(m, Params.load(m)) for m in _split(modes)]
    for f in _split(params_files):
        labelled.append((Path(f).stem, Params.load(None, f)))  # the file names its own mode
    catalog = Catalog()
    if not catalog.symbols():
        catalog = ensure_sample(catalog)
    universe: list[str] = []
    for _, p in labelled:
        universe += [s for s in p.universe if s not in universe]
    if not universe:
        universe = list(Params.preset().universe)
    start_d, end_d = catalog.resolve_range(universe, start, end)
    panel = catalog.read_panel(universe, start_d, end_d)
    if len(panel.index) == 0:
        raise ValueError(f"no bars for {', '.join(universe)} between {start_d} and {end_d}")
    events = catalog.read_events(start_d, end_d)
    runs = [run_mode(label, p, panel, events) for label, p in labelled]
    runs += [load_live_dir(d, panel) for d in from_live]
    cmp = compare_runs(runs, n_boot=n_boot)
    labels = "-".join(r.label for r in runs)
    run = RunDir.create("compare", mode=labels, start=start_d, end=end_d, params=ComparedSets(runs),
                        symbols=panel.symbols, root=out,
                        extra={"modes": [r.label for r in runs], "from_live": [str(d) for d in from_live],
                               "bootstrap": n_boot})
    out_dir = run.path
    cmp.table.to_parquet(out_dir / "compare.parquet", index=False)
    cmp.sessions.to_parquet(out_dir / "sessions.parquet", index=False)
    cmp.hourly.to_parquet(out_dir / "hourly.parquet", index=False)
    prov = {"modes": ", ".join(r.label for r in runs), "range": f"{start_d} .. {end_d}",
            "sessions": cmp.sessions["session"].nunique(), "symbols": ", ".join(panel.symbols),
            "catalog": str(catalog.root), "bootstrap resamples": n_boot}
    html_path = write_compare_report(cmp, out_dir / "report.html",
                                     f"tierlab compare — {', '.join(r.label for r in runs)} — {start_d} .. {end_d}", prov)
    run.finish(["compare.parquet", "sessions.parquet", "hourly.parquet", html_path.name],
               extra={"sessions": int(cmp.sessions["session"].nunique())})
    return cmp, html_path


class ComparedSets:
    """The compared runs' parameters as one object for RunDir: one TOML table per label, one hash."""

    def __init__(self, runs: Sequence[ModeRun]) -> None:
        self.runs = list(runs)

    def model_dump(self) -> dict[str, Any]:
        """{label: the run's parameters}."""
        return {r.label: r.params.model_dump() for r in self.runs}

    def to_toml(self, path: str | Path) -> str:
        """`[<label>]` tables, each a Params file's `[params]` table (read one back with tomllib)."""
        import tomllib

        import tomli_w

        text = tomli_w.dumps({r.label: tomllib.loads(r.params.to_toml())["params"] for r in self.runs})
        Path(path).write_text(text)
        return text


def summary_text(cmp: Comparison) -> str:
    """One line per KPI with a verdict other than 'not distinguishable', then the counts."""
    lines = [f"baseline {cmp.baseline}; {cmp.sessions['session'].nunique()} sessions"]
    for rec in cmp.table.itertuples():
        lines.append(f"  {rec.mode:<10} {rec.kpi:<28} {rec.diff_mean:+12.4f}  "
                     f"[{rec.ci_low:+.4f}, {rec.ci_high:+.4f}]  {rec.verdict}")
    lines.append(f"rollback triggers fired: {len(cmp.triggers)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, compare, print the verdicts; a bad request prints one line and exits 2."""
    from research.compare_cli import build_parser
    from tierlab.errors import TierlabError

    args = build_parser().parse_args(argv)
    modes = args.modes if args.modes is not None else ("" if (args.params or args.from_live) else "default,relaxed")
    try:
        cmp, path = run_job(modes, args.params, args.start, args.end, args.from_live, args.out, args.bootstrap)
    except (TierlabError, ValueError, FileNotFoundError, KeyError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary_text(cmp))
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
