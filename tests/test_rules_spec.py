"""SPEC readings of §5-§6 that a re-derivation of the rules found the kernel getting wrong (issue 9),
plus the settled readings that already held, pinned so they stay that way.

Each test drives the compiled history loop and, where the state matters, the bar-by-bar walk.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from kernel_fixtures import UNIVERSE, decision, make_inputs, strategy

from strategies import codes as C
from strategies import kernel as K
from strategies.params import Params
from strategies.tiered_basket import TieredBasketStrategy, param_matrix

NO_GATES = {"cooldown_s": 0.0, "direction_lock_s": 0.0}


def megatech(t: int, v: float) -> list[tuple[int, str, float]]:
    """The five evaluated MEGATECH members (GOOGL is Bench) all scoring v at bar t."""
    return [(t, s, v) for s in ("AAPL", "MSFT", "AMZN", "META", "TSLA")]


def _orders(orders: np.ndarray) -> list[tuple[int, str, str, str]]:
    return [(int(o["bar"]), UNIVERSE[o["col"]], "buy" if o["side"] > 0 else "sell",
             C.ORDER_REASON_NAMES[int(o["reason"])]) for o in orders]


# ---- a) max hold is measured from the fill --------------------------------------------------------

@pytest.mark.parametrize("minutes", [1, 3, 5])
def test_max_hold_sells_exactly_max_hold_minutes_after_the_fill(minutes: int) -> None:
    strat = strategy(max_hold_minutes=minutes)
    inputs = make_inputs(12, [(0, "NVDA", 0.6)])
    o = strat.run_inputs(inputs).orders
    assert _orders(o) == [(1, "NVDA", "buy", "entry"), (1 + minutes, "NVDA", "sell", "max_hold")]
    held = inputs.index[o["bar"][1]] - inputs.index[o["bar"][0]]  # open of the fill bar to open of the exit bar
    assert held == pd.Timedelta(minutes=minutes)


def test_max_hold_on_30_second_bars_counts_from_the_fill_open() -> None:
    strat = strategy(max_hold_minutes=2)
    inputs = make_inputs(12, [(0, "NVDA", 0.6)], step_s=30)
    o = strat.run_inputs(inputs).orders
    assert _orders(o) == [(1, "NVDA", "buy", "entry"), (5, "NVDA", "sell", "max_hold")]


# ---- b) the ETF lock follows every order in the ETF ----------------------------------------------

def falling(n: int) -> list[tuple[int, str, float]]:
    """MEGATECH falling at every bar of n: the basket fires from bar 1 on."""
    return [x for t in range(n) for x in megatech(t, -0.6)]


def test_etf_lock_follows_a_max_hold_sell() -> None:
    # basket entry decided at bar 1 (fill bar 2), max hold 2 min: sell decided at bar 3, filled at bar 4
    strat = strategy(max_hold_minutes=2, **NO_GATES)
    res = strat.run_inputs(make_inputs(8, falling(8), prices={"SQQQ": 10.0}))
    assert _orders(res.orders)[:2] == [(2, "SQQQ", "buy", "basket_entry"), (4, "SQQQ", "sell", "max_hold")]
    d = res.decisions[0]
    assert decision(d, 4, "SQQQ") == "etf_lock"  # 60 s after the max-hold sell order (not 180 s after the buy)
    assert decision(d, 5, "SQQQ") == "actionable"  # 120 s after it


@pytest.mark.parametrize("bar, reason", [({"low": 9.0}, "stop"), ({"high": 11.0}, "take_profit")])
def test_etf_lock_follows_a_stop_or_take_profit_fill(bar: dict, reason: str) -> None:
    # entry decided at bar 1 (close 09:32), filled at bar 2's open, exited inside bar 2 (close 09:33)
    strat = strategy(**NO_GATES)
    res = strat.run_inputs(make_inputs(6, falling(6), prices={"SQQQ": 10.0}, bars={(2, "SQQQ"): bar}))
    assert _orders(res.orders)[:2] == [(2, "SQQQ", "buy", "basket_entry"), (2, "SQQQ", "sell", reason)]
    d = res.decisions[0]
    assert decision(d, 3, "SQQQ") == "etf_lock"  # 60 s after the bar the exit filled in
    assert decision(d, 4, "SQQQ") == "actionable"


def test_etf_lock_follows_a_flatten_sell() -> None:
    strat = strategy(flatten_before_close_min=3, **NO_GATES)
    mtc = [10, 9, 8, 7, 3, 2, 1, 0]
    res = strat.run_inputs(make_inputs(8, falling(8), prices={"SQQQ": 10.0}, minutes_to_close=mtc))
    assert (4, "SQQQ", "sell", "flatten") not in _orders(res.orders)  # decided at bar 4, fills at bar 5
    assert (5, "SQQQ", "sell", "flatten") in _orders(res.orders)
    assert decision(res.decisions[0], 5, "SQQQ") == "etf_lock"  # not "session_end": the lock came first


# ---- c) inside a bar: every market fill at the open first, then stops ---------------------------

def _cash_binding_run(tier_a: tuple[str, ...]) -> float:
    """NVDA is held with a stop hit in bar 1; TSLA's pending buy of 30 fills at bar 1's open.
    Cash before the stop is $1,000: the buy is cut to what that affords. Returns TSLA's fill qty."""
    p = Params.preset("default").replace(tier_a=tier_a)
    strat = TieredBasketStrategy(p)
    col = {s: j for j, s in enumerate(p.universe)}
    n = len(p.universe)
    inputs = make_inputs(3)
    # make_inputs lays columns out in the default universe; permute them into this one
    perm = [UNIVERSE.index(s) for s in p.universe]
    low = inputs.low[:, perm].copy()
    low[1, col["NVDA"]] = 95.0
    inputs = dataclasses.replace(inputs, symbols=p.universe, open=inputs.open[:, perm], high=inputs.high[:, perm],
                                 low=low, close=inputs.close[:, perm], scores=np.full((3, n), np.nan),
                                 events=np.zeros((3, n), dtype=bool))
    state = strat.new_state(10_000.0)
    nv, ts = col["NVDA"], col["TSLA"]
    state.f[K.F_CASH] = 1_000.0
    state.sf[nv, [K.SF_QTY, K.SF_ENTRY, K.SF_STOP, K.SF_TP, K.SF_LAST, K.SF_COST]] = (90, 100, 98.5, 103, 100, 9000)
    state.sf[ts, K.SF_PENDING] = 30.0
    state.si[ts, K.SI_PEND_REASON] = C.ORDER_ENTRY
    state.si[ts, K.SI_PEND_DEC] = inputs.close_epoch[0]
    state.i[K.I_DAY] = inputs.day[0]
    log = strat.walk(inputs, state, 1, 2)
    got = {(p.universe[o["col"]], C.ORDER_REASON_NAMES[int(o["reason"])]): float(o["qty"]) for o in log.orders}
    assert got[("NVDA", "stop")] == 90
    assert state.f[K.F_CASH] >= 0
    return got[("TSLA", "entry")]


@pytest.mark.parametrize("tier_a", [("NVDA", "TSLA", "AAPL"), ("TSLA", "NVDA", "AAPL")])
def test_cash_freed_by_an_in_bar_stop_never_pays_a_fill_at_that_open(tier_a: tuple[str, ...]) -> None:
    assert _cash_binding_run(tier_a) == np.floor(1_000.0 / (100.0 * 1.0002))  # 9 shares, whatever the columns


def _open_sell_funds_open_buy(tier_a: tuple[str, ...]) -> float:
    """NVDA's pending market sell of 90 and TSLA's pending buy of 30 both fill at bar 1's open, with
    $100 of cash before the open. Returns TSLA's fill qty."""
    p = Params.preset("default").replace(tier_a=tier_a)
    strat = TieredBasketStrategy(p)
    col = {s: j for j, s in enumerate(p.universe)}
    n = len(p.universe)
    inputs = make_inputs(3)
    perm = [UNIVERSE.index(s) for s in p.universe]
    inputs = dataclasses.replace(inputs, symbols=p.universe, open=inputs.open[:, perm], high=inputs.high[:, perm],
                                 low=inputs.low[:, perm], close=inputs.close[:, perm],
                                 scores=np.full((3, n), np.nan), events=np.zeros((3, n), dtype=bool))
    state = strat.new_state(10_000.0)
    nv, ts = col["NVDA"], col["TSLA"]
    state.f[K.F_CASH] = 100.0
    state.sf[nv, [K.SF_QTY, K.SF_ENTRY, K.SF_STOP, K.SF_TP, K.SF_LAST, K.SF_COST]] = (90, 100, 98.5, 103, 100, 9000)
    state.si[nv, K.SI_ENTRY_T] = inputs.close_epoch[0] - 60
    for j, qty, reason in ((nv, -90.0, C.ORDER_EXIT_SIGNAL), (ts, 30.0, C.ORDER_ENTRY)):
        state.sf[j, K.SF_PENDING] = qty
        state.si[j, K.SI_PEND_REASON] = reason
        state.si[j, K.SI_PEND_DEC] = inputs.close_epoch[0]
    state.i[K.I_DAY] = inputs.day[0]
    log = strat.walk(inputs, state, 1, 2)
    got = {(p.universe[o["col"]], C.ORDER_REASON_NAMES[int(o["reason"])]): float(o["qty"]) for o in log.orders}
    assert got[("NVDA", "exit_signal")] == 90
    assert state.f[K.F_CASH] >= 0
    return got.get(("TSLA", "entry"), 0.0)


@pytest.mark.parametrize("tier_a", [("NVDA", "TSLA", "AAPL"), ("TSLA", "NVDA", "AAPL")])
def test_a_market_sell_at_the_open_pays_a_market_buy_at_that_open_whatever_the_columns(
        tier_a: tuple[str, ...]) -> None:
    # SPEC §5b: every pending market order fills at the open, together; only cash an in-bar stop frees
    # is out of reach of the open. $100 + 90 x 99.98 covers 30 x 100.02, whichever column comes first.
    assert _open_sell_funds_open_buy(tier_a) == 30


# ---- d) a position without a stop counts qty x last x stop_loss_pct --------------------------------

def _held_without_stop(strat: TieredBasketStrategy, sym: str, qty: float, price: float = 100.0) -> K.State:
    state = strat.new_state(10_000.0)
    j = UNIVERSE.index(sym)
    state.sf[j, K.SF_QTY] = qty  # found at the broker: no entry price, no stop, no take-profit
    state.sf[j, K.SF_ENTRY] = np.nan
    state.sf[j, K.SF_LAST] = price
    state.sf[j, K.SF_COST] = qty * price
    state.f[K.F_CASH] -= qty * price
    return state


def test_a_position_without_a_stop_counts_its_risk_and_entries_go_on() -> None:
    # QQQ 10 @ 100 without a stop risks 10 * 100 * 1.5% = $15 of the $50 concurrent-risk budget (0.5%);
    # NVDA may take the $35 left: floor(35 / 1.50) = 23 shares
    strat = strategy(max_concurrent_risk=0.005, exposure_cap=1.0, min_slots=1)
    state = _held_without_stop(strat, "QQQ", 10)
    log = strat.walk(make_inputs(3, [(0, "NVDA", 0.6)]), state)
    assert decision(log.decisions, 0, "NVDA") == "actionable"
    nvda = log.orders[log.orders["col"] == UNIVERSE.index("NVDA")]
    assert float(nvda["qty"][0]) == 23
    _n_open, exposure, risk = K._book_nb(state, param_matrix([strat.params])[0])
    assert not np.isnan(risk) and not np.isnan(exposure)


def test_max_hold_never_sells_a_position_whose_fill_is_unknown() -> None:
    # SPEC §5b measures max hold from the fill; a position found at the broker has no known fill, so it
    # is not "held for ever": it stays until an exit rule that needs no fill time (flatten, stop, signal)
    strat = strategy(max_hold_minutes=30)
    log = strat.walk(make_inputs(3), _held_without_stop(strat, "MSFT", 10))
    assert len(log.orders) == 0
    log = strat.walk(make_inputs(4, minutes_to_close=[7, 6, 5, 4]), _held_without_stop(strat, "MSFT", 10))
    assert [C.ORDER_REASON_NAMES[int(o["reason"])] for o in log.orders] == ["flatten"]


def test_risk_summary_of_a_position_without_a_stop_is_a_number_and_blocked_when_over() -> None:
    strat = strategy()
    rs = strat.risk_summary(_held_without_stop(strat, "QQQ", 10))
    assert rs["current_risk_pct"] == pytest.approx(0.15)  # $15 of $10,000
    assert rs["risk_status"] == "safe"
    # 110 shares at $100 without a stop: $165 = 1.65% of equity, above 0.75 x 2%: a warning
    rs = strat.risk_summary(_held_without_stop(strat, "QQQ", 110))
    assert rs["current_risk_pct"] == pytest.approx(1.65) and rs["risk_status"] == "warning"
    # 140 shares: $210 = 2.1% > 2%: blocked, never NaN and "safe"
    rs = strat.risk_summary(_held_without_stop(strat, "QQQ", 140))
    assert rs["current_risk_pct"] == pytest.approx(2.1) and rs["risk_status"] == "blocked"
    assert rs["remaining_capacity"] == 0.0


def test_a_position_without_a_price_still_counts_at_its_entry() -> None:
    strat = strategy()
    state = _held_without_stop(strat, "QQQ", 10)
    state.sf[UNIVERSE.index("QQQ"), K.SF_LAST] = np.nan
    state.sf[UNIVERSE.index("QQQ"), K.SF_ENTRY] = 100.0
    rs = strat.risk_summary(state)
    assert rs["current_risk_pct"] == pytest.approx(0.15) and not np.isnan(rs["equity"])


# ---- settled readings that already hold ------------------------------------------------------

def test_basket_orders_skip_the_stock_cooldown_and_direction_lock() -> None:
    # entry decided at bar 1, exit at bar 3 (two ticks up), re-entry at bar 5: 120 s after the exit order
    # is past the 90 s ETF lock, though inside a 600 s cooldown and a 600 s direction lock
    scores = megatech(0, -0.6) + megatech(1, -0.6) + megatech(2, 0.3) + megatech(3, 0.3) + megatech(4, -0.6) \
        + megatech(5, -0.6)
    strat = strategy(cooldown_s=600.0, direction_lock_s=600.0)
    res = strat.run_inputs(make_inputs(7, scores, prices={"SQQQ": 10.0}))
    d = res.decisions[0]
    assert [decision(d, t, "SQQQ") for t in (1, 3, 5)] == ["actionable", "exit_signal", "actionable"]
    assert _orders(res.orders) == [(2, "SQQQ", "buy", "basket_entry"), (4, "SQQQ", "sell", "basket_exit"),
                                   (6, "SQQQ", "buy", "basket_entry")]


@pytest.mark.parametrize("second, want", [(0, "below_cutoff"), (9, "below_cutoff"), (10, "token"), (30, "token")])
def test_reserve_fallback_only_while_the_second_is_below_10(second: int, want: str) -> None:
    strat = strategy(mode="relaxed", tokens_a=2)
    inputs = make_inputs(1, [(0, "NVDA", 0.1), (0, "TSLA", 0.1), (0, "AAPL", 0.1)])
    inputs = dataclasses.replace(inputs, close_epoch=inputs.close_epoch + second)
    res = strat.run_inputs(inputs)
    assert decision(res.decisions[0], 0, "AAPL") == want
    assert res.extras["reserve_fallbacks"][0] == (1 if want == "below_cutoff" else 0)


def test_a_buy_the_cash_cannot_cover_is_cut_to_the_shares_it_affords() -> None:
    # sized at the $100 close: 100 shares for all $10,000; the open gaps to $105: 95 shares are affordable
    strat = strategy(risk_per_trade=0.1, exposure_cap=1.0, min_slots=1, max_positions=1, max_concurrent_risk=1.0)
    res = strat.run_inputs(make_inputs(3, [(0, "NVDA", 0.6)], bars={(1, "NVDA"): {"open": 105.0, "low": 105.0, "high": 105.0, "close": 105.0}}))
    buy = res.orders[0]
    assert buy["qty"] == np.floor(10_000.0 / (105.0 * 1.0002)) == 95
    assert res.cash[1, 0] == pytest.approx(10_000.0 - 95 * 105.0 * 1.0002) and res.cash[1, 0] >= 0


def test_basket_decisions_carry_the_basket_mean_score() -> None:
    vals = (-0.6, -0.5, -0.4, -0.7, -0.3)  # AAPL MSFT AMZN META TSLA: mean -0.5
    up = (0.3, 0.2, 0.4, 0.1, 0.5)  # mean 0.3
    scores = [(t, s, v) for t in (0, 1) for s, v in zip(("AAPL", "MSFT", "AMZN", "META", "TSLA"), vals, strict=True)]
    scores += [(t, s, v) for t in (2, 3) for s, v in zip(("AAPL", "MSFT", "AMZN", "META", "TSLA"), up, strict=True)]
    res = strategy(**NO_GATES).run_inputs(make_inputs(5, scores, prices={"SQQQ": 10.0}))
    df = res.decisions_frame()
    sq = df[df["symbol"] == "SQQQ"].set_index("reason")["score"]
    assert sq["actionable"] == pytest.approx(-0.5)
    assert sq["exit_signal"] == pytest.approx(0.3)
    # the stocks keep their own scores
    aapl = df[(df["symbol"] == "AAPL")]["score"].tolist()
    assert aapl[:2] == [-0.6, -0.6]
