"""research.kpis on hand-made runs: every expected figure is worked out by hand in the test."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from research import kpis
from strategies import codes
from strategies.base import ORDER_DTYPE, RunResult

# 14:30 UTC = 10:30 New York (EDT) on 2024-10-21
INDEX = pd.date_range("2024-10-21 14:30", periods=40, freq="1min", tz="UTC")


def _run(orders: list[tuple], equity: np.ndarray | None = None, decisions: np.ndarray | None = None,
         scores: np.ndarray | None = None, params: object = None) -> RunResult:
    T = len(INDEX)
    eq = np.full((T, 1), 1000.0) if equity is None else equity.reshape(T, 1)
    counts = np.zeros((1, codes.N_DECISIONS), dtype=np.int64)
    if decisions is not None:
        counts[0] = np.bincount(decisions.ravel(), minlength=codes.N_DECISIONS)
    return RunResult(index=INDEX, symbols=("AAA", "BBB"), init_cash=1000.0, orders=np.array(orders, dtype=ORDER_DTYPE),
                     equity=eq, cash=eq.copy(), reason_counts=counts,
                     decisions=None if decisions is None else decisions[None], scores=scores,
                     params=[params] if params is not None else [])


def test_round_trip_pnl_mae_mfe_and_stop_out() -> None:
    low = np.full((40, 2), 100.0)
    high = np.full((40, 2), 100.5)
    low[2:5, 0] = [98.0, 97.0, 99.0]  # worst low while held: 97 -> MAE -3 %
    high[2:5, 0] = [101.0, 104.0, 102.0]  # best high while held: 104 -> MFE +4 %
    low[5, 0], high[5, 0] = 90.0, 110.0  # the exit bar's range is after the fill at its open: ignored
    close = (low + high) / 2
    run = _run([
        (0, 2, 1, 0, 1, 10.0, 100.0, 1.0, codes.ORDER_ENTRY),
        (0, 5, 4, 0, -1, 10.0, 103.0, 1.0, codes.ORDER_STOP),
        (0, 10, 9, 1, 1, 5.0, 100.0, 0.5, codes.ORDER_ENTRY),  # still open at the end
    ])
    trades = kpis.round_trips(run, low, high, close)
    closed = trades[~trades["is_open"]].iloc[0]
    assert closed["pnl"] == pytest.approx(10 * 103 - 10 * 100 - 2.0)
    assert closed["mae"] == pytest.approx(-0.03) and closed["mfe"] == pytest.approx(0.04)
    assert closed["exit_reason"] == codes.ORDER_STOP
    still = trades[trades["is_open"]].iloc[0]
    assert still["pnl"] == pytest.approx(5 * close[-1, 1] - 500 - 0.5)
    tm = kpis.trade_metrics(trades, run).iloc[0]
    assert tm["n_trades"] == 1 and tm["win_rate"] == 1.0 and tm["stop_out_rate"] == 1.0
    assert tm["fees"] == pytest.approx(2.5) and tm["n_orders"] == 3


def test_equity_figures() -> None:
    eq = np.full(40, 1000.0)
    eq[10:20], eq[20:30], eq[30:] = 1200.0, 900.0, 1100.0
    cash = eq.copy()
    cash[10:20] = 600.0  # half the equity in positions for 10 of 40 bars
    m = kpis.equity_metrics(eq[:, None], cash[:, None], INDEX, 1000.0).iloc[0]
    assert m["total_return"] == pytest.approx(0.1)
    assert m["max_drawdown"] == pytest.approx(900 / 1200 - 1)
    assert m["exposure"] == pytest.approx(10 * 0.5 / 40)
    assert m["cagr"] == pytest.approx(1.1 ** 252 - 1)  # one session


def test_flip_flops_strong_signals_and_hours() -> None:
    d = np.zeros((40, 2), dtype=np.int8)
    d[0, 0] = codes.ACTIONABLE  # 10:30 up
    d[5, 0] = codes.EVIDENCE  # 10:35 down, 5 min later: a flip
    d[8, 0] = codes.EVIDENCE  # same direction: no flip
    d[35, 0] = codes.ACTIONABLE  # 27 min after the last signal: no flip
    d[1:4, 1] = codes.BELOW_CUTOFF
    d[4, 1] = codes.COOLDOWN
    d[6, 1] = codes.TOKEN
    scores = np.zeros((40, 2))
    scores[0, 0], scores[5, 0], scores[8, 0], scores[35, 0] = 0.9, -0.5, -0.66, 0.7
    scores[1:4, 1] = 0.1
    run = _run([], decisions=d, scores=scores, params=SimpleNamespace(cutoff=0.45, cutoff_delta=0.0))
    s = kpis.signal_kpis(run, kpis.round_trips(run, scores, scores, scores), 0)
    assert s["flip_flops"] == 1 and s["flip_flop_rate"] == pytest.approx(1 / 2)  # SPEC §8: per actionable (2)
    assert s["signals_generated"] == 9 and s["suppressed_below_cutoff"] == 3 and s["suppressed_cooldown"] == 1
    assert s["token_overflow_rate"] == pytest.approx(1 / 9)
    # strong: |score| >= 0.65 among the 8 evaluated (the token-skipped one was not evaluated)
    assert s["strong_signal_rate"] == pytest.approx(3 / 8)
    assert s["llm_calls"] == 0
    h = kpis.hourly_kpis(run, kpis.round_trips(run, scores, scores, scores), 0)
    assert h.index.tolist() == [10, 11]
    assert h.loc[10, "flip_flops"] == 1 and h.loc[11, "actionable"] == 1 and h.loc[10, "strong_signals"] == 2


# --- issue 9 §4: figures a wrong change would move ---------------------------------------------

SIX_DAYS = ("2024-10-21", "2024-10-22", "2024-10-23", "2024-10-24", "2024-10-25", "2024-10-28")
# three bars a session (09:30, 09:31 and 15:59 New York, EDT): the session's return is taken at its last bar
SIX_INDEX = pd.DatetimeIndex([pd.Timestamp(f"{d} {t}", tz="America/New_York").tz_convert("UTC")
                              for d in SIX_DAYS for t in ("09:30", "09:31", "15:59")])


def test_sharpe_sortino_calmar_on_six_sessions_match_hand_values() -> None:
    r = np.array([0.02, -0.01, 0.03, -0.02, 0.01, 0.01])  # daily returns, close to close, from 1000
    closes = 1000.0 * np.cumprod(1 + r)
    eq = np.repeat(closes, 3)
    eq[0::3] -= 5.0  # the first bar of each day is noise the daily figures must not see
    eq[10] = 980.0  # ... except the drawdown: an intraday low on day 4 below every close
    m = kpis.equity_metrics(eq[:, None], eq[:, None], SIX_INDEX, 1000.0).iloc[0]
    # by hand: mean 0.04/6, sample std (ddof 1) of r, downside sqrt(mean(min(r, 0)^2)), 252 sessions a year
    mean = 0.04 / 6
    std = math.sqrt(sum((x - mean) ** 2 for x in r) / 5)
    downside = math.sqrt((0.01**2 + 0.02**2) / 6)
    assert m["sharpe"] == pytest.approx(mean / std * math.sqrt(252), rel=1e-9)
    assert m["sharpe"] == pytest.approx(5.6840, abs=1e-4)  # not 6.8407 (365 a year)
    assert m["sortino"] == pytest.approx(mean / downside * math.sqrt(252), rel=1e-9)
    assert m["sortino"] == pytest.approx(11.5931, abs=1e-4)  # not 13.9523
    final = closes[-1]  # 1040.32...
    cagr = (final / 1000.0) ** (252 / 6) - 1
    peak = max(closes[:3])  # the high-water mark before the 980 dip on day 4 (09:31)
    assert m["cagr"] == pytest.approx(cagr, rel=1e-9)
    assert m["max_drawdown"] == pytest.approx(980.0 / peak - 1, rel=1e-9)
    assert m["calmar"] == pytest.approx(cagr / (1 - 980.0 / peak), rel=1e-9)


def test_drawdown_from_the_first_bar_counts_from_the_initial_cash() -> None:
    eq = np.array([990.0, 985.0, 995.0] + [1000.0] * 15)  # falls from the very first bar, never above 1000
    m = kpis.equity_metrics(eq[:, None], eq[:, None], SIX_INDEX, 1000.0).iloc[0]
    assert m["max_drawdown"] == pytest.approx(-0.015)  # 985 / 1000 - 1, not 985 / 990 - 1


def test_win_rate_counts_a_break_even_trade_as_not_won_and_profit_factor() -> None:
    flat = np.full((40, 2), 100.0)
    run = _run([
        (0, 1, 0, 0, 1, 10.0, 100.0, 0.0, codes.ORDER_ENTRY),
        (0, 3, 2, 0, -1, 10.0, 103.0, 0.0, codes.ORDER_TAKE_PROFIT),  # +30
        (0, 5, 4, 0, 1, 4.0, 100.0, 0.0, codes.ORDER_ENTRY),
        (0, 7, 6, 0, -1, 4.0, 98.0, 0.0, codes.ORDER_STOP),  # -8
        (0, 2, 1, 1, 1, 5.0, 100.0, 0.0, codes.ORDER_ENTRY),
        (0, 4, 3, 1, -1, 5.0, 102.0, 0.0, codes.ORDER_MAX_HOLD),  # +10
        (0, 8, 7, 1, 1, 5.0, 100.0, 0.0, codes.ORDER_ENTRY),
        (0, 9, 8, 1, -1, 5.0, 100.0, 0.0, codes.ORDER_MAX_HOLD),  # break-even: 0
    ])
    trades = kpis.round_trips(run, flat, flat, flat)
    assert sorted(trades["pnl"]) == pytest.approx([-8.0, 0.0, 10.0, 30.0])
    tm = kpis.trade_metrics(trades, run).iloc[0]
    assert tm["n_trades"] == 4
    assert tm["win_rate"] == pytest.approx(2 / 4)  # the break-even trade is a trade, not a win
    assert tm["profit_factor"] == pytest.approx((30 + 10) / 8)


def test_mae_of_a_stop_that_gapped_below_the_lows_is_the_fill() -> None:
    low = np.full((40, 2), 99.0)
    high = np.full((40, 2), 101.0)
    low[2:5, 0] = [99.0, 98.5, 98.0]  # lows while held: at worst -2 %
    low[5, 0], high[5, 0] = 93.0, 96.0  # the stop bar gapped down: filled at its open, 95
    run = _run([
        (0, 2, 1, 0, 1, 10.0, 100.0, 0.0, codes.ORDER_ENTRY),
        (0, 5, 4, 0, -1, 10.0, 95.0, 0.0, codes.ORDER_STOP),
    ])
    t = kpis.round_trips(run, low, high, (low + high) / 2).iloc[0]
    assert t["mae"] == pytest.approx(-0.05)  # the fill below every low held, not -2 %
    assert t["mfe"] == pytest.approx(0.01)


def test_open_trade_whose_symbol_has_no_last_bar_is_marked_at_its_last_close() -> None:
    close = np.full((40, 2), 100.0)
    close[:, 1] = np.linspace(50.0, 60.0, 40)
    close[-4:, 1] = np.nan  # BBB has no bar in the last four minutes (a thin ETF on IEX)
    low, high = close - 0.5, close + 0.5
    run = _run([(0, 10, 9, 1, 1, 7.0, close[10, 1], 0.25, codes.ORDER_ENTRY)])
    t = kpis.round_trips(run, low, high, close).iloc[0]
    assert bool(t["is_open"]) and t["exit_bar"] == -1
    assert t["exit_price"] == pytest.approx(close[35, 1])
    assert t["pnl"] == pytest.approx(7 * (close[35, 1] - close[10, 1]) - 0.25)
    assert np.isfinite(t["mae"]) and t["mfe"] == pytest.approx((close[35, 1] + 0.5) / close[10, 1] - 1)
