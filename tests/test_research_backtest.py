"""research.backtest: vectorbt replay agrees with the rules' accounting, no look-ahead, grid = single."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data.bars import Panel
from data.sample import generate_panel
from research.backtest import backtest, run_grid
from research.portfolio import replay
from strategies.codes import ORDER_STOP, ORDER_TAKE_PROFIT
from strategies.fills import BUY
from strategies.params import Params
from strategies.signal import MACrossStrategy, SignalParams
from strategies.tiered_basket import TieredBasketStrategy

COSTS = {"slippage": 0.0005, "fee_per_share": 0.005, "fee_per_order": 1.0}


@pytest.fixture(scope="module")
def week() -> Panel:
    """One synthetic week of the 12-symbol sample universe (minute bars, thin ETFs have gaps)."""
    return generate_panel("2024-10-21", "2024-10-25")


@pytest.fixture(scope="module")
def tiered_params() -> Params:
    return Params.preset("relaxed").replace(fee_per_share=0.005, fee_per_order=0.5)


def _edited_after(panel: Panel, t: int, seed: int = 3) -> Panel:
    """The same panel with every bar after t scaled by random factors (gaps stay gaps)."""
    rng = np.random.default_rng(seed)
    f = np.ones(panel.shape)
    f[t + 1 :] = rng.uniform(0.8, 1.25, (panel.shape[0] - t - 1, panel.shape[1]))
    g = np.ones(panel.shape)
    g[t + 1 :] = rng.uniform(1.0, 1.02, (panel.shape[0] - t - 1, panel.shape[1]))
    return Panel(index=panel.index, symbols=panel.symbols, open=panel.open * f, high=panel.high * f * g,
                 low=panel.low * f / g, close=panel.close * f, volume=panel.volume * f)


def test_vectorbt_replay_matches_rules_cash_and_equity_to_the_cent(week: Panel, tiered_params: Params) -> None:
    strategies = [
        (MACrossStrategy(), [SignalParams(fast=5, slow=20, **COSTS), SignalParams(fast=10, slow=40, **COSTS)]),
        (TieredBasketStrategy(tiered_params), [tiered_params, tiered_params.replace(cutoff=0.35)]),
    ]
    for strategy, sets in strategies:
        result = strategy.run(week, sets, init_cash=10_000.0)
        assert len(result.orders) > 20, f"{strategy.name}: too few orders to prove anything"
        rp = replay(result, week.select(result.symbols).close)
        assert np.abs(rp.value().to_numpy() - result.equity).max() < 0.005, strategy.name
        assert np.abs(rp.cash().to_numpy() - result.cash).max() < 0.005, strategy.name
        fees = rp.portfolio.orders.records_readable.groupby("Column")["Fees"].sum().sum()
        assert fees == pytest.approx(result.orders["fees"].sum(), abs=0.01)


def test_fills_are_next_open_plus_slippage_with_fees(week: Panel) -> None:
    p = SignalParams(fast=5, slow=20, **COSTS)
    r = MACrossStrategy(p).run(week.select(["NVDA"]))
    o = r.orders
    assert not np.isnan(week.close[:, week.col("NVDA")]).any()  # no missing minute: the next bar is t + 1
    assert len(o) > 4 and (o["bar"] == o["decision_bar"] + 1).all()
    open_ = week.open[o["bar"], week.col("NVDA")]
    expected = np.where(o["side"] == BUY, open_ * 1.0005, open_ * 0.9995)
    np.testing.assert_allclose(o["price"], expected, rtol=1e-12)
    np.testing.assert_allclose(o["fees"], o["qty"] * 0.005 + 1.0)
    assert (o["qty"] == np.floor(o["qty"])).all()


@pytest.mark.parametrize("t_frac", [0.3, 0.7])
def test_editing_bars_after_t_leaves_earlier_orders_unchanged(week: Panel, tiered_params: Params, t_frac: float) -> None:
    t = int(len(week.index) * t_frac)
    edited = _edited_after(week, t)
    cases = [(MACrossStrategy(), SignalParams(fast=5, slow=20, **COSTS)), (TieredBasketStrategy(tiered_params), tiered_params)]
    for strategy, p in cases:
        a = strategy.run(week, [p]).orders
        b = strategy.run(edited, [p]).orders
        assert (a["bar"] <= t).sum() > 5, f"{strategy.name}: no orders before t"
        np.testing.assert_array_equal(a[a["bar"] <= t], b[b["bar"] <= t], err_msg=strategy.name)
        # market orders decided at or before t are the same (resting stops/take-profits filled after
        # t depend on the later bars, as they should)
        market_a = ~np.isin(a["reason"], (ORDER_STOP, ORDER_TAKE_PROFIT))
        market_b = ~np.isin(b["reason"], (ORDER_STOP, ORDER_TAKE_PROFIT))
        da, db = a[market_a & (a["decision_bar"] <= t)], b[market_b & (b["decision_bar"] <= t)]
        np.testing.assert_array_equal(da[["decision_bar", "col", "side", "reason"]],
                                      db[["decision_bar", "col", "side", "reason"]], err_msg=strategy.name)
        # and the edit is visible afterwards (the test would catch a run that ignored the data)
        assert len(a) != len(b) or not np.array_equal(a["price"], b["price"])


def _one(x: object) -> float:
    return float(np.asarray(x).ravel()[0])


def _kpis_by_hand(orders: np.ndarray, panel: Panel, init_cash: float) -> tuple[np.ndarray, dict[str, float]]:
    """Equity at each bar close and the headline KPIs, rebuilt from the fills alone (no research code).

    Cash moves by qty x price and fees at each fill; positions are marked at the last close seen;
    daily returns run from session close to session close (the first against the initial cash),
    Sharpe = mean / std (ddof 1) x sqrt(252); drawdown against the running peak floored at the
    initial cash; a round trip ends when a symbol's position is back to 0, its P&L net of fees.
    """
    T, N = panel.close.shape
    last = pd.DataFrame(panel.close).ffill().to_numpy()
    flow, pos = np.zeros(T), np.zeros((T, N))
    for o in orders:
        flow[o["bar"]] -= o["side"] * o["qty"] * o["price"] + o["fees"]
        pos[o["bar"]:, o["col"]] += o["side"] * o["qty"]
    held = np.where(pos != 0, pos * np.nan_to_num(last), 0.0)
    equity = init_cash + np.cumsum(flow) + held.sum(axis=1)
    day = pd.Series(equity, index=panel.index.tz_convert("America/New_York").date).groupby(level=0).last()
    daily = np.diff(np.r_[init_cash, day.to_numpy()]) / np.r_[init_cash, day.to_numpy()][:-1]
    peak = np.maximum(np.maximum.accumulate(equity), init_cash)
    pnls = []
    for c in range(N):
        mine = orders[orders["col"] == c]
        mine = mine[np.argsort(mine["bar"], kind="stable")]
        q = pnl = 0.0
        for o in mine:
            q += o["side"] * o["qty"]
            pnl -= o["side"] * o["qty"] * o["price"] + o["fees"]
            if abs(q) < 1e-9:
                pnls.append(pnl)
                pnl = 0.0
    pnls_a = np.array(pnls)
    won, lost = pnls_a[pnls_a > 0].sum(), -pnls_a[pnls_a < 0].sum()
    return equity, {
        "total_return": equity[-1] / init_cash - 1.0,
        "sharpe": daily.mean() / daily.std(ddof=1) * np.sqrt(252),
        "max_drawdown": (equity / peak - 1.0).min(),
        "n_trades": len(pnls_a),
        "win_rate": (pnls_a > 0).mean() if len(pnls_a) else np.nan,
        "profit_factor": won / lost if len(pnls_a) else np.nan,
        "fees": orders["fees"].sum(),
    }


def test_grid_rows_equal_kpis_computed_by_hand_and_vectorbt_stats(week: Panel) -> None:
    sets = [SignalParams(fast=f, slow=s, **COSTS) for f, s in ((3, 20), (5, 30), (8, 60))]
    grid = run_grid(MACrossStrategy(), week, sets, chunk=2)
    assert list(grid.metrics["fast"]) == [3, 5, 8] and grid.equity.shape == (len(week.index), 3)
    for k, p in enumerate(sets):
        fills = MACrossStrategy().run(week, [p], init_cash=10_000.0).orders
        assert len(fills) > 20
        equity, want = _kpis_by_hand(fills, week, 10_000.0)
        np.testing.assert_allclose(grid.equity[k].to_numpy(), equity, rtol=1e-9)
        row = grid.metrics.iloc[k]
        assert 0 < want["n_trades"] and 0 < want["win_rate"] < 1 and want["max_drawdown"] < 0
        for key, value in want.items():
            assert row[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        # and vectorbt's own accounting of the same fills agrees on the figures it has
        bt = backtest(MACrossStrategy(), week, p)
        pf = bt.portfolio
        assert _one(pf.total_return()) == pytest.approx(row["total_return"], abs=1e-9)
        assert _one(pf.max_drawdown()) == pytest.approx(row["max_drawdown"], abs=1e-9)
        assert _one(pf.trades.closed.count()) == row["n_trades"]
        assert row["fees"] == pytest.approx(float(np.sum(pf.orders.fees.sum())), abs=0.01)


def test_tiered_backtest_reports_spec8_kpis(week: Panel, tiered_params: Params) -> None:
    bt = backtest(TieredBasketStrategy(tiered_params), week, tiered_params)
    s = bt.signals
    counts = bt.result.reason_counts[0]
    assert s["signals_generated"] == counts[1:].sum()
    assert s["suppressed_cooldown"] > 0 and s["suppressed_below_cutoff"] > 0
    assert 0 < s["strong_signal_rate"] < 1
    assert s["llm_calls"] == 0
    assert 0 <= s["token_overflow_rate"] <= 1 and "token_overflow_rate_A" in s
    assert bt.hourly.index.tolist() == [9, 10, 11, 12, 13, 14, 15]
    assert bt.hourly["signals_generated"].sum() == s["signals_generated"]
    assert bt.hourly["flip_flops"].sum() == s["flip_flops"]
    assert bt.trades["mae"].le(0).all() and (bt.trades["mae"] <= bt.trades["mfe"]).all()
    assert set(bt.orders["reason"]) <= {"entry", "exit_signal", "stop", "take_profit", "flatten", "max_hold",
                                        "basket_entry", "basket_exit"}
