"""Backtest speed: tierlab's full pipeline for 1 and 256 parameter sets vs backtrader and backtesting.py.

A year of synthetic minute bars for the 12 sample symbols (data.sample.generate_panel). Ours runs
scores, rules, portfolio accounting and the metrics table (research.backtest.run_grid; the single
set also through research.backtest.backtest, which adds the vectorbt replay, the KPIs and the
trade table). The peers run the same moving-average crossover on one symbol over a slice of the
year (they are slow); their time is scaled linearly to 12 symbols x the whole year and the output
says so. Numba compile time is paid in a warm-up run and reported apart.

    .venv/bin/python benchmarks/backtest_speed.py [--peer-days 20] [--sets 256]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from data.sample import generate_panel
from research.backtest import backtest, run_grid
from strategies.params import Params
from strategies.signal import MACrossStrategy, SignalParams
from strategies.space import expand_grid
from strategies.tiered_basket import TieredBasketStrategy

COSTS = {"slippage": 0.0002, "fee_per_share": 0.005, "fee_per_order": 0.0}


def ma_sets(n: int) -> list[SignalParams]:
    """n MA-cross sets: fast x slow windows."""
    fast = [2, 3, 4, 5, 6, 8, 10, 12, 15, 18, 20, 25, 30, 35, 40, 45]
    slow = [50, 60, 70, 80, 90, 100, 120, 140, 160, 180, 200, 240, 280, 320, 360, 390]
    sets = [SignalParams(fast=f, slow=s, **COSTS) for f in fast for s in slow]
    return sets[:n]


def tiered_sets(n: int) -> list[Params]:
    """n tiered-basket sets from the strategy's own search space (2 score models x rule gates)."""
    base = Params.preset("default")
    space = TieredBasketStrategy.search_space
    grid = expand_grid(space, {"cutoff": [0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65], "cooldown_s": [60, 120, 180, 300],
                               "direction_lock_s": [60, 120, 300, 600], "mom_window": [10, 20]},
                       TieredBasketStrategy.constraints)
    return [base.replace(**g) for g in grid[:n]]


def timed(fn: Callable[..., Any], *a: Any, **kw: Any) -> tuple[Any, float]:
    """(result, wall seconds) of one call."""
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def run_backtrader(df: pd.DataFrame, fast: int, slow: int) -> tuple[float, int]:
    """The MA crossover in backtrader (next-open market fills, fixed size); returns (seconds, fills)."""
    import backtrader as bt

    class Cross(bt.Strategy):
        def __init__(self) -> None:
            self.f = bt.indicators.SMA(self.data.close, period=fast)
            self.s = bt.indicators.SMA(self.data.close, period=slow)
            self.n = 0

        def notify_order(self, order: bt.Order) -> None:
            self.n += order.status == order.Completed

        def next(self) -> None:
            if not self.position and self.f[0] > self.s[0] and self.f[-1] <= self.s[-1]:
                self.buy(size=10)
            elif self.position and self.s[0] > self.f[0] and self.s[-1] <= self.f[-1]:
                self.close()

    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=df))
    cerebro.addstrategy(Cross)
    cerebro.broker.setcash(10_000.0)
    cerebro.broker.set_slippage_perc(COSTS["slippage"], slip_open=True, slip_match=True, slip_out=True)
    t = time.perf_counter()
    strat = cerebro.run()[0]
    return time.perf_counter() - t, strat.n


def run_backtesting_py(df: pd.DataFrame, fast: int, slow: int) -> tuple[float, int]:
    """The MA crossover in backtesting.py (trade_on_close=False: next-open fills); (seconds, trades)."""
    from backtesting import Backtest, Strategy

    class Cross(Strategy):
        def init(self) -> None:
            sma = lambda x, n: pd.Series(x).rolling(n).mean().to_numpy()  # noqa: E731
            self.f = self.I(sma, self.data.Close, fast)
            self.s = self.I(sma, self.data.Close, slow)

        def next(self) -> None:
            if not self.position and self.f[-1] > self.s[-1] and self.f[-2] <= self.s[-2]:
                self.buy(size=10)
            elif self.position and self.s[-1] > self.f[-1] and self.s[-2] <= self.f[-2]:
                self.position.close()

    bt_ = Backtest(df.rename(columns=str.capitalize), Cross, cash=10_000.0, trade_on_close=False)
    t = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):  # its progress bar
        warnings.simplefilter("ignore")
        stats = bt_.run()
    return time.perf_counter() - t, int(stats["# Trades"])


def main() -> None:
    """Print the figures and the speed ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-days", type=int, default=20, help="sessions the peers run on (scaled to the year)")
    ap.add_argument("--sets", type=int, default=256)
    args = ap.parse_args()

    panel, t_gen = timed(generate_panel, "2024-01-01", "2024-12-31")
    T, N = panel.shape
    print(f"panel: {T:,} minute bars x {N} symbols ({T * N:,} bar-symbols), generated in {t_gen:.1f} s")

    # warm-up: compile / load every numba kernel once, on a small slice
    small = panel.slice(None, panel.index[3000])
    _, t_warm = timed(lambda: (backtest(MACrossStrategy(ma_sets(1)[0]), small), run_grid(MACrossStrategy(), small, ma_sets(2)),
                               backtest(TieredBasketStrategy(), small), run_grid(TieredBasketStrategy(), small, tiered_sets(2))))
    print(f"warm-up (numba compile or cache load): {t_warm:.1f} s")

    rows = []
    p1 = ma_sets(1)[0]
    _, t = timed(backtest, MACrossStrategy(p1), panel, p1)
    rows.append(("ma_cross", "backtest() 1 set + vectorbt replay + KPIs", 1, t))
    _, ma_single = timed(run_grid, MACrossStrategy(), panel, [p1])
    rows.append(("ma_cross", "run_grid 1 set", 1, ma_single))
    g, t = timed(run_grid, MACrossStrategy(), panel, ma_sets(args.sets))
    rows.append(("ma_cross", f"run_grid {args.sets} sets", args.sets, t))
    ma_per_set = t / args.sets
    tp = Params.preset("default")
    _, t = timed(backtest, TieredBasketStrategy(tp), panel, tp)
    rows.append(("tiered_basket", "backtest() 1 set + vectorbt replay + KPIs", 1, t))
    _, t = timed(run_grid, TieredBasketStrategy(), panel, [tp])
    rows.append(("tiered_basket", "run_grid 1 set", 1, t))
    tsets = tiered_sets(args.sets)
    gt, t = timed(run_grid, TieredBasketStrategy(), panel, tsets)
    rows.append(("tiered_basket", f"run_grid {len(tsets)} sets", len(tsets), t))

    print(f"\n{'strategy':<14} {'pipeline':<44} {'sets':>5} {'seconds':>8} {'sets/s':>8} {'Mbar-sym/s':>11}")
    for name, what, k, sec in rows:
        print(f"{name:<14} {what:<44} {k:>5} {sec:>8.2f} {k / sec:>8.1f} {k * T * N / sec / 1e6:>11.1f}")
    best = g.metrics.sort_values("sharpe", ascending=False).iloc[0]
    print(f"\nbest MA set by Sharpe: fast={int(best['fast'])} slow={int(best['slow'])} sharpe={best['sharpe']:.2f} "
          f"trades={int(best['n_trades'])}; tiered sweep median trades/set {np.median(gt.metrics['n_trades']):.0f}")

    # peers: one symbol over the first --peer-days sessions, scaled to 12 symbols x the year
    days = np.unique(panel.index.tz_convert("America/New_York").date)
    sub = panel.slice(None, str(days[min(args.peer_days, len(days) - 1)]))
    df = sub.bars("NVDA")[["open", "high", "low", "close", "volume"]]
    df.index = df.index.tz_localize(None)
    scale = (T * N) / len(df)
    print(f"\npeers: MA cross on NVDA, {len(df):,} bars ({args.peer_days} sessions); scaled x{scale:.0f} "
          f"to {N} symbols x {T:,} bars (linear scaling, one parameter set)")
    for peer, fn in (("backtrader", run_backtrader), ("backtesting.py", run_backtesting_py)):
        sec, n = fn(df, p1.fast, p1.slow)
        full = sec * scale
        print(f"  {peer:<15} {sec:7.2f} s on the slice ({n} fills/trades) -> {full:8.1f} s per set on the full year;"
              f" tierlab is {full / ma_per_set:,.0f}x faster per set in the {args.sets}-set sweep,"
              f" {full / ma_single:,.0f}x for a single set (run_grid)")
    print(f"\ntarget: {args.sets}-set sweep < 60 s (ma_cross {rows[2][3]:.1f} s, tiered {rows[5][3]:.1f} s); "
          f">= 1000x backtrader per set")


if __name__ == "__main__":
    main()
