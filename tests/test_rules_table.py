"""Table-driven rule tests (SPEC §2-§6) on hand-worked bars.

Each case runs through both drivers (the compiled history loop and the bar-by-bar Python walk of
the same step) and checks the decision code per bar and symbol, and the orders placed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from kernel_fixtures import UNIVERSE, decision, make_inputs, strategy

from strategies import kernel as K
from strategies.codes import ORDER_REASON_NAMES
from strategies.fills import market_fill_price_nb
from strategies.rules.risk import position_cap_notional_nb

SLIP = 0.0002
BUY_FILL = market_fill_price_nb(100.0, 1, SLIP)  # a market buy at a 100.00 open


@dataclass
class Case:
    name: str
    n_bars: int
    scores: list[tuple[int, str, float]]
    expect: list[tuple[int, str, str]]  # (bar, symbol, decision name)
    params: dict[str, Any] = field(default_factory=dict)
    orders: list[tuple[int, str, str, str]] | None = None  # (fill bar, symbol, side, reason): exactly these
    bars: dict[tuple[int, str], dict[str, float]] = field(default_factory=dict)
    events: list[tuple[int, str]] = field(default_factory=list)
    step_s: int = 60
    day: list[int] | None = None
    mtc: list[int] | None = None
    prices: dict[str, float] | None = None
    missing: list[tuple[int, str]] = field(default_factory=list)


def megatech(t: int, v: float) -> list[tuple[int, str, float]]:
    """The five evaluated MEGATECH members (GOOGL is Bench) all scoring v at bar t."""
    return [(t, s, v) for s in ("AAPL", "MSFT", "AMZN", "META", "TSLA")]


CASES = [
    Case("below cutoff is suppressed", 2, [(0, "NVDA", 0.30), (1, "NVDA", -0.44)],
         [(0, "NVDA", "below_cutoff"), (1, "NVDA", "below_cutoff")], orders=[]),
    Case("actionable long fills at the next open, never at the decision close", 3, [(0, "NVDA", 0.6)],
         [(0, "NVDA", "actionable")], orders=[(1, "NVDA", "buy", "entry")],
         bars={(0, "NVDA"): {"close": 100.0}, (1, "NVDA"): {"open": 100.0}}),
    Case("cooldown refuses a second signal inside cooldown_s", 2, [(0, "NVDA", 0.6), (1, "NVDA", 0.7)],
         [(0, "NVDA", "actionable"), (1, "NVDA", "cooldown")]),
    Case("a reversal inside the direction lock is refused, allowed after it", 8,
         [(0, "NVDA", -0.6), (4, "NVDA", 0.6), (6, "NVDA", 0.6)],
         [(0, "NVDA", "evidence"), (4, "NVDA", "direction_lock"), (6, "NVDA", "actionable")],
         orders=[(7, "NVDA", "buy", "entry")]),
    Case("a negative score on a stock not held is evidence, never a short", 3, [(0, "AAPL", -0.9)],
         [(0, "AAPL", "evidence")], orders=[]),
    Case("an exit against a held long passes the cooldown", 4, [(0, "NVDA", 0.6), (1, "NVDA", -0.6)],
         [(0, "NVDA", "actionable"), (1, "NVDA", "exit_signal")],
         orders=[(1, "NVDA", "buy", "entry"), (2, "NVDA", "sell", "exit_signal")]),
    Case("a signal refused by risk does not count toward the daily cap", 9,
         [(0, "NVDA", 0.6), (1, "TSLA", 0.6), (2, "NVDA", -0.6), (4, "TSLA", 0.6), (5, "TSLA", -0.6),
          (7, "TSLA", 0.6)],
         [(0, "NVDA", "actionable"), (1, "TSLA", "risk"), (2, "NVDA", "exit_signal"), (4, "TSLA", "actionable"),
          (5, "TSLA", "exit_signal"), (7, "TSLA", "daily_cap")],
         params={"cap_a": 1, "max_positions": 1, "cooldown_s": 0.0, "direction_lock_s": 0.0}),
    Case("the second identical signal inside 90 s is not counted twice", 4,
         [(0, "NVDA", 0.6), (1, "NVDA", 0.6), (2, "NVDA", 0.6)],
         [(0, "NVDA", "actionable"), (1, "NVDA", "duplicate"), (2, "NVDA", "actionable")],
         params={"cap_a": 2, "cooldown_s": 0.0, "direction_lock_s": 0.0},
         bars={(1, "NVDA"): {"low": 95.0}},  # the entry filled at bar 1's open is stopped out in bar 1
         orders=[(1, "NVDA", "buy", "entry"), (1, "NVDA", "sell", "stop"), (3, "NVDA", "buy", "entry")]),
    Case("the global daily cap binds across tickers", 3, [(0, "NVDA", 0.6), (0, "TSLA", 0.6), (0, "AAPL", 0.6)],
         [(0, "NVDA", "actionable"), (0, "TSLA", "actionable"), (0, "AAPL", "daily_cap")],
         params={"global_daily_cap": 2}),
    Case("daily caps reset at the next New York session", 3, [(0, "NVDA", 0.6), (1, "NVDA", -0.6), (2, "NVDA", 0.6)],
         [(0, "NVDA", "actionable"), (1, "NVDA", "exit_signal"), (2, "NVDA", "actionable")],
         params={"cap_a": 1, "cooldown_s": 0.0, "direction_lock_s": 0.0, "flatten_before_close_min": 0},
         day=[1, 1, 2]),
    Case("a basket needs 2 consecutive ticks; a broken tick starts over", 6,
         megatech(0, -0.6) + megatech(1, 0.1) + megatech(2, -0.6) + megatech(3, -0.6),
         [(0, "SQQQ", "not_evaluated"), (2, "SQQQ", "not_evaluated"), (3, "SQQQ", "actionable")],
         params={"cooldown_s": 0.0, "direction_lock_s": 0.0}, prices={"SQQQ": 10.0},
         orders=[(4, "SQQQ", "buy", "basket_entry")]),
    Case("a falling semis basket routes to SOXS, not SQQQ", 4,
         [(t, s, -0.6) for t in (0, 1) for s in ("NVDA", "AMD", "AVGO")],
         [(1, "SOXS", "actionable"), (1, "SQQQ", "not_evaluated")],
         events=[(t, s) for t in (0, 1) for s in ("AMD", "AVGO")],
         params={"tokens_reserve": 2, "cooldown_s": 0.0, "direction_lock_s": 0.0},
         orders=[(2, "SOXS", "buy", "basket_entry")]),
    Case("one stock falling alone never shorts the index", 4, [(t, "AAPL", -0.9) for t in range(4)],
         [(t, "SQQQ", "not_evaluated") for t in range(4)], orders=[]),
    Case("the 11th SQQQ buy in one second never happens (ETF lock)", 12,
         [x for t in range(12) for x in megatech(t, -0.6)],
         [(1, "SQQQ", "actionable")] + [(t, "SQQQ", "etf_lock") for t in range(3, 12)],
         params={"cadence_a_s": 0.0, "cadence_b_s": 0.0, "tokens_a": 100, "tokens_b": 100, "cooldown_s": 0.0,
                 "direction_lock_s": 0.0},
         step_s=1, prices={"SQQQ": 10.0}, bars={(2, "SQQQ"): {"low": 9.0}},  # stopped out at once
         orders=[(2, "SQQQ", "buy", "basket_entry"), (2, "SQQQ", "sell", "stop")]),
    Case("Tier B runs at capacity: an event on a B ticker overflows the bucket", 1,
         [(0, "MSFT", 0.1), (0, "AMZN", 0.1), (0, "META", 0.1)],
         [(0, "MSFT", "below_cutoff"), (0, "AMZN", "below_cutoff"), (0, "META", "token")],
         events=[(0, "MSFT")]),
    Case("Bench tickers are evaluated only on events, from the Reserve bucket", 2,
         [(0, "GOOGL", 0.1), (0, "AMD", 0.1), (1, "AVGO", 0.1), (1, "AMD", 0.1)],
         [(0, "GOOGL", "not_evaluated"), (0, "AMD", "below_cutoff"), (1, "AMD", "below_cutoff"),
          (1, "AVGO", "token")],
         events=[(0, "AMD"), (1, "AMD"), (1, "AVGO")]),
    Case("default mode: Tier A has no reserve fallback", 1,
         [(0, "NVDA", 0.1), (0, "TSLA", 0.1), (0, "AAPL", 0.1)],
         [(0, "NVDA", "below_cutoff"), (0, "TSLA", "below_cutoff"), (0, "AAPL", "token")],
         params={"tokens_a": 2}),
    Case("relaxed mode: Tier A borrows the Reserve token in seconds 0-10", 1,
         [(0, "NVDA", 0.1), (0, "TSLA", 0.1), (0, "AAPL", 0.1)],
         [(0, "NVDA", "below_cutoff"), (0, "TSLA", "below_cutoff"), (0, "AAPL", "below_cutoff")],
         params={"mode": "relaxed", "tokens_a": 2}),
    Case("relaxed mode lowers the cutoff by 0.03", 1, [(0, "NVDA", 0.43)], [(0, "NVDA", "actionable")],
         params={"mode": "relaxed"}),
    Case("no entries inside the flatten window; held positions are flattened", 4,
         [(0, "NVDA", 0.6), (2, "TSLA", 0.6)],
         [(0, "NVDA", "actionable"), (2, "TSLA", "session_end")], mtc=[8, 7, 5, 4],
         orders=[(1, "NVDA", "buy", "entry"), (3, "NVDA", "sell", "flatten")]),
    Case("max positions refuses the entry with reason risk", 2, [(0, "NVDA", 0.6), (0, "TSLA", 0.6)],
         [(0, "NVDA", "actionable"), (0, "TSLA", "risk")], params={"max_positions": 1}),
    Case("the daily loss limit stops new entries", 4, [(0, "NVDA", 0.6), (3, "TSLA", 0.6)],
         [(0, "NVDA", "actionable"), (3, "TSLA", "risk")],
         params={"risk_per_trade": 0.05, "stop_loss_pct": 0.5, "exposure_cap": 1.0, "min_slots": 1,
                 "max_concurrent_risk": 1.0},
         bars={(2, "NVDA"): {"close": 40.0, "low": 40.0}}),
    Case("a stop gapped through fills at the open", 3, [(0, "NVDA", 0.6)], [(0, "NVDA", "actionable")],
         bars={(2, "NVDA"): {"open": 90.0, "low": 89.0, "high": 90.0}},
         orders=[(1, "NVDA", "buy", "entry"), (2, "NVDA", "sell", "stop")]),
    # --- baskets: shares, thresholds, exits, ticks on a faster feed ---
    Case("a basket needs a 60% negative share, whatever its mean", 4,
         [(t, s, v) for t in (0, 1) for s, v in (("AAPL", -0.9), ("MSFT", -0.9), ("AMZN", 0.05), ("META", 0.05),
                                                 ("TSLA", 0.05))],
         [(1, "SQQQ", "not_evaluated")], orders=[]),
    Case("60% negative with a low enough mean fires", 4,
         [(t, s, v) for t in (0, 1) for s, v in (("AAPL", -0.9), ("MSFT", -0.9), ("AMZN", -0.9), ("META", 0.05),
                                                 ("TSLA", 0.05))],
         [(1, "SQQQ", "actionable")], params={"cooldown_s": 0.0, "direction_lock_s": 0.0},
         prices={"SQQQ": 10.0}),
    Case("a mean above -0.12 does not fire", 3, megatech(0, -0.11) + megatech(1, -0.11),
         [(1, "SQQQ", "not_evaluated")], orders=[]),
    Case("a mean of -0.13 fires", 3, megatech(0, -0.13) + megatech(1, -0.13), [(1, "SQQQ", "actionable")],
         prices={"SQQQ": 10.0}),
    Case("the inverse ETF is sold after 2 ticks of the basket turning up, not 1", 8,
         megatech(0, -0.6) + megatech(1, -0.6) + megatech(3, 0.3) + megatech(4, 0.05) + megatech(5, 0.3)
         + megatech(6, 0.3),
         [(1, "SQQQ", "actionable"), (3, "SQQQ", "not_evaluated"), (6, "SQQQ", "exit_signal")],
         params={"cooldown_s": 0.0, "direction_lock_s": 0.0}, prices={"SQQQ": 10.0},
         orders=[(2, "SQQQ", "buy", "basket_entry"), (7, "SQQQ", "sell", "basket_exit")]),
    Case("on 30 s bars Tier B is evaluated every other bar and the basket still ticks", 6,
         [x for t in range(6) for x in megatech(t, -0.6)],
         [(1, "MSFT", "not_evaluated"), (2, "SQQQ", "actionable")],
         params={"cooldown_s": 0.0, "direction_lock_s": 0.0}, step_s=30, prices={"SQQQ": 10.0}),
    Case("a conflicting pair is refused while its partner is only pending", 3,
         [x for t in (0, 1) for x in megatech(t, -0.6)] + [(t, s, -0.6) for t in (0, 1) for s in ("NVDA", "AMD", "AVGO")],
         [(1, "SQQQ", "actionable"), (1, "SOXS", "conflict")],
         events=[(t, s) for t in (0, 1) for s in ("AMD", "AVGO")],
         params={"tokens_reserve": 2, "cooldown_s": 0.0, "direction_lock_s": 0.0,
                 "conflicts": (("QQQ", "SQQQ"), ("SQQQ", "SOXS"))}, prices={"SQQQ": 10.0, "SOXS": 20.0}),
    Case("basket ticks do not run across sessions", 3, megatech(0, -0.6) + megatech(1, -0.6),
         [(1, "SQQQ", "not_evaluated")], params={"flatten_before_close_min": 0}, prices={"SQQQ": 10.0},
         day=[1, 2, 2], orders=[]),
    Case("the ETF lock holds 90 s: refused at 60 s, allowed at 120 s", 4,
         [x for t in range(4) for x in megatech(t, -0.6)],
         [(1, "SQQQ", "actionable"), (2, "SQQQ", "etf_lock"), (3, "SQQQ", "actionable")],
         params={"cooldown_s": 0.0, "direction_lock_s": 0.0, "cadence_b_s": 0.0},
         # the buy gaps out of reach at bar 2's open and is dropped: no other order restarts the lock
         prices={"SQQQ": 10.0}, bars={(2, "SQQQ"): {"open": 1e6, "high": 1e6}}, orders=[]),
    Case("the ETF lock also follows a basket exit", 6,
         megatech(0, -0.6) + megatech(1, -0.6) + megatech(2, 0.3) + megatech(3, 0.3) + megatech(4, -0.6)
         + megatech(5, -0.6),
         [(3, "SQQQ", "exit_signal"), (5, "SQQQ", "etf_lock")],
         params={"cooldown_s": 0.0, "direction_lock_s": 0.0, "cadence_b_s": 0.0, "tokens_b": 100}, step_s=30,
         prices={"SQQQ": 10.0}),
    # --- gates at their boundaries ---
    Case("the direction lock ends exactly at direction_lock_s", 7, [(0, "NVDA", -0.6), (5, "NVDA", 0.6)],
         [(0, "NVDA", "evidence"), (5, "NVDA", "actionable")]),
    Case("a duplicate inside the window is reported before the cap", 3, [(0, "NVDA", 0.6), (1, "NVDA", 0.6)],
         [(0, "NVDA", "actionable"), (1, "NVDA", "duplicate")],
         params={"cap_a": 1, "cooldown_s": 0.0, "direction_lock_s": 0.0}, bars={(1, "NVDA"): {"low": 95.0}}),
    Case("the global cap resets at the next New York session", 3, [(0, "NVDA", 0.6), (2, "TSLA", 0.6)],
         [(0, "NVDA", "actionable"), (2, "TSLA", "actionable")],
         params={"global_daily_cap": 1, "flatten_before_close_min": 0}, day=[1, 1, 2]),
    Case("a 1.5% day loss still allows entries; the limit is 2%", 4, [(0, "NVDA", 0.6), (3, "TSLA", 0.6)],
         [(0, "NVDA", "actionable"), (3, "TSLA", "actionable")],
         params={"risk_per_trade": 0.05, "stop_loss_pct": 0.5, "exposure_cap": 1.0, "min_slots": 1,
                 "max_concurrent_risk": 1.0},
         bars={(2, "NVDA"): {"close": 85.0, "low": 85.0}}),
    Case("a 3% day loss stops entries; the limit is 2%", 4, [(0, "NVDA", 0.6), (3, "TSLA", 0.6)],
         [(0, "NVDA", "actionable"), (3, "TSLA", "risk")],
         params={"risk_per_trade": 0.05, "stop_loss_pct": 0.5, "exposure_cap": 1.0, "min_slots": 1,
                 "max_concurrent_risk": 1.0},
         bars={(2, "NVDA"): {"close": 70.0, "low": 70.0}}),
    Case("once hit, the daily loss limit holds for the rest of the session", 6,
         [(0, "NVDA", 0.6), (4, "TSLA", 0.6)], [(0, "NVDA", "actionable"), (4, "TSLA", "risk")],
         params={"risk_per_trade": 0.05, "stop_loss_pct": 0.5, "exposure_cap": 1.0, "min_slots": 1,
                 "max_concurrent_risk": 1.0},
         bars={(2, "NVDA"): {"close": 40.0, "low": 60.0, "open": 100.0}, (3, "NVDA"): {"open": 100.0}}),
    Case("a new session lifts the daily loss limit", 4, [(0, "NVDA", 0.6), (3, "TSLA", 0.6)],
         [(0, "NVDA", "actionable"), (3, "TSLA", "actionable")],
         params={"risk_per_trade": 0.05, "stop_loss_pct": 0.5, "exposure_cap": 1.0, "min_slots": 1,
                 "max_concurrent_risk": 1.0, "flatten_before_close_min": 0},
         bars={(2, "NVDA"): {"close": 40.0, "low": 40.0}}, day=[1, 1, 1, 2]),
    # --- tokens ---
    Case("the reserve fallback is only for seconds 0-10 of the minute", 2,
         [(t, s, 0.1) for t in (0, 1) for s in ("NVDA", "TSLA", "AAPL")],
         [(0, "AAPL", "token"), (1, "AAPL", "below_cutoff")],
         params={"mode": "relaxed", "tokens_a": 2}, step_s=30),
    Case("Tier A's bucket refills to capacity, leftovers do not pile up", 2,
         [(0, "NVDA", 0.1)] + [(1, s, 0.1) for s in ("NVDA", "TSLA", "AAPL")], [(1, "AAPL", "token")],
         params={"tokens_a": 2}),
    Case("only Tier A may borrow the reserve", 1, [(0, "MSFT", 0.1), (0, "AMZN", 0.1), (0, "META", 0.1)],
         [(0, "META", "token")], params={"mode": "relaxed", "tokens_b": 2}),
    Case("buckets refill to capacity, unused tokens do not pile up", 2,
         [(0, "MSFT", 0.1), (1, "MSFT", 0.1), (1, "AMZN", 0.1), (1, "META", 0.1)],
         [(1, "META", "token")], events=[(1, "MSFT")]),
    Case("buckets refill once per minute, not per bar", 2,
         [(t, s, 0.1) for t in (0, 1) for s in ("MSFT", "AMZN", "META")],
         [(0, "META", "below_cutoff"), (1, "MSFT", "token"), (1, "META", "token")],
         params={"cadence_b_s": 0.0}, step_s=20),
    Case("a held stock exits even when its bucket is empty", 4,
         [(0, "META", 0.6), (2, "MSFT", 0.1), (2, "AMZN", 0.1), (2, "META", -0.9)],
         [(0, "META", "actionable"), (2, "META", "exit_signal")], events=[(2, "MSFT")],
         orders=[(1, "META", "buy", "entry"), (3, "META", "sell", "exit_signal")]),
    # --- exits ---
    Case("a take-profit inside a bar fills at its price", 3, [(0, "NVDA", 0.6)], [(0, "NVDA", "actionable")],
         bars={(2, "NVDA"): {"high": 110.0}}, orders=[(1, "NVDA", "buy", "entry"), (2, "NVDA", "sell", "take_profit")]),
    Case("a bar touching both the stop and the take-profit exits at the stop", 3, [(0, "NVDA", 0.6)],
         [(0, "NVDA", "actionable")], bars={(2, "NVDA"): {"high": 110.0, "low": 90.0}},
         orders=[(1, "NVDA", "buy", "entry"), (2, "NVDA", "sell", "stop")]),
    Case("max_hold_minutes closes a position exactly max_hold_minutes after the fill", 6, [(0, "NVDA", 0.6)],
         [(0, "NVDA", "actionable")],
         params={"max_hold_minutes": 3}, orders=[(1, "NVDA", "buy", "entry"), (4, "NVDA", "sell", "max_hold")]),
    Case("an entry that finds no bar before the close is dropped, not carried overnight", 4,
         [(0, "NVDA", 0.6)], [(0, "NVDA", "actionable")], mtc=[6, 5, 300, 299], day=[1, 1, 2, 2],
         missing=[(1, "NVDA")], orders=[]),
]


def _run_both(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    params = dict(case.params)
    strat = strategy(**params)
    inputs = make_inputs(case.n_bars, case.scores, prices=case.prices, bars=case.bars, events=case.events,
                         step_s=case.step_s, day=case.day, minutes_to_close=case.mtc, missing=case.missing)
    res = strat.run_inputs(inputs)
    log = strat.walk(inputs, strat.new_state())
    return res.decisions[0], res.orders, log.decisions, log.orders


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rule_table(case: Case) -> None:
    dec, orders, walk_dec, walk_orders = _run_both(case)
    for t, sym, want in case.expect:
        assert decision(dec, t, sym) == want, f"bar {t} {sym}: {decision(dec, t, sym)} != {want}"
    if case.orders is not None:
        got = [(int(o["bar"]), UNIVERSE[o["col"]], "buy" if o["side"] > 0 else "sell",
                ORDER_REASON_NAMES[int(o["reason"])]) for o in orders]
        assert got == case.orders
    assert (orders["bar"] > orders["decision_bar"]).all(), "an order filled at or before its decision bar"
    # the Python walk of the same step function agrees exactly
    np.testing.assert_array_equal(dec, walk_dec)
    np.testing.assert_array_equal(orders, walk_orders)


def test_entry_fill_price_is_next_open_plus_slippage() -> None:
    strat = strategy()
    inputs = make_inputs(3, [(0, "NVDA", 0.6)], bars={(0, "NVDA"): {"close": 100.0}, (1, "NVDA"): {"open": 101.0}})
    o = strat.run_inputs(inputs).orders
    assert o["price"][0] == pytest.approx(101.0 * (1 + SLIP))
    assert o["decision_bar"][0] == 0 and o["bar"][0] == 1


def test_missing_minute_fills_at_the_next_existing_bar() -> None:
    strat = strategy()
    inputs = make_inputs(4, [(0, "NVDA", 0.6)], bars={(2, "NVDA"): {"open": 103.0}}, missing=[(1, "NVDA")])
    o = strat.run_inputs(inputs).orders
    assert int(o["bar"][0]) == 2 and o["price"][0] == pytest.approx(103.0 * (1 + SLIP))


def test_ten_thousand_dollar_account_caps_one_position_at_2666_67() -> None:
    # the formula: 0.8 * equity / max(3 slots kept, slots left)
    assert position_cap_notional_nb(10_000.0, 0.0, 0, 3, 0.8, 3) == pytest.approx(2666.6667, abs=0.01)
    assert position_cap_notional_nb(10_000.0, 2000.0, 1, 4, 0.8, 3) == pytest.approx(2666.6667, abs=0.01)
    # through the kernel: risk_per_trade alone would buy 333 shares at $100; one position is open
    strat = strategy(risk_per_trade=0.05)
    inputs = make_inputs(4, [(0, "NVDA", 0.6), (1, "TSLA", 0.6)])
    o = strat.run_inputs(inputs, init_cash=10_000.0).orders
    tsla = o[o["col"] == UNIVERSE.index("TSLA")][0]
    assert tsla["qty"] * 100.0 <= 2666.67
    assert tsla["qty"] == np.floor(2666.6667 / 100.0) == 26


def test_qqq_and_sqqq_are_never_held_together() -> None:
    strat = strategy(cooldown_s=0.0, direction_lock_s=0.0)
    inputs = make_inputs(5, megatech(0, -0.6) + megatech(1, -0.6) + megatech(2, -0.6), prices={"SQQQ": 10.0})
    state = strat.new_state()
    q = UNIVERSE.index("QQQ")
    state.sf[q, K.SF_QTY] = 10.0  # the account already holds QQQ
    state.sf[q, K.SF_LAST] = 100.0
    state.f[K.F_CASH] -= 1000.0
    log = strat.walk(inputs, state)
    assert decision(log.decisions, 1, "SQQQ") == "conflict"
    assert len(log.orders) == 0


def test_risk_refusal_and_duplicate_leave_the_counters_alone() -> None:
    """Counters visible in the state: only actionable signals count (SPEC §4.5, §10)."""
    strat = strategy(max_positions=1, cooldown_s=0.0, direction_lock_s=0.0)
    inputs = make_inputs(3, [(0, "NVDA", 0.6), (1, "TSLA", 0.6), (2, "AAPL", 0.6)])
    state = strat.new_state()
    strat.walk(inputs, state)
    assert state.i[K.I_GLOBAL] == 1
    assert state.si[UNIVERSE.index("TSLA"), K.SI_DAY_COUNT] == 0
    assert state.si[UNIVERSE.index("NVDA"), K.SI_DAY_COUNT] == 1


def test_risk_summary_fields() -> None:
    strat = strategy()
    inputs = make_inputs(3, [(0, "NVDA", 0.6)])
    state = strat.new_state()
    strat.walk(inputs, state)
    rs = strat.risk_summary(state)
    for key in ("current_risk_pct", "max_risk_pct", "risk_status", "remaining_capacity", "daily_loss_limit",
                "risk_per_trade", "max_positions", "stop_loss_pct", "kelly_fraction"):
        assert key in rs
    assert rs["max_risk_pct"] == pytest.approx(2.0)
    assert 0 < rs["current_risk_pct"] < 2.0 and rs["risk_status"] in ("safe", "warning")


def test_min_slots_keep_a_position_small_when_few_slots_are_left() -> None:
    assert position_cap_notional_nb(10_000.0, 0.0, 0, 1, 0.8, 3) == pytest.approx(2666.67, abs=0.01)
    assert position_cap_notional_nb(10_000.0, 0.0, 0, 4, 0.8, 3) == pytest.approx(2000.0)
    assert position_cap_notional_nb(10_000.0, 7000.0, 2, 4, 0.8, 3) == pytest.approx(1000.0)  # exposure left


def test_concurrent_risk_counts_pending_entries_and_rounds_down() -> None:
    # stop 10% away: each share risks $10; 0.7% of $10,000 = $70 of risk in all
    strat = strategy(stop_loss_pct=0.1, take_profit_pct=0.2, max_concurrent_risk=0.007)
    o = strat.run_inputs(make_inputs(3, [(0, "NVDA", 0.6), (0, "TSLA", 0.6)])).orders
    qty = {UNIVERSE[c]: q for c, q in zip(o["col"], o["qty"], strict=True)}
    assert qty["NVDA"] == 5  # floor(0.005 * 10,000 / 10)
    assert qty["TSLA"] == 2  # floor((70 - 50 pending) / 10)


def test_cash_follows_prices_slippage_and_fees_to_the_cent() -> None:
    strat = strategy(fee_per_share=0.01, fee_per_order=1.0, slippage=0.001)
    inputs = make_inputs(4, [(0, "NVDA", 0.6), (1, "NVDA", -0.6)], bars={(1, "NVDA"): {"open": 100.0},
                                                                        (2, "NVDA"): {"open": 102.0}})
    res = strat.run_inputs(inputs)
    buy, sell = res.orders
    assert buy["price"] == pytest.approx(100.1) and sell["price"] == pytest.approx(102.0 * 0.999)
    assert buy["fees"] == pytest.approx(buy["qty"] * 0.01 + 1.0)
    cash = 10_000.0 - buy["qty"] * buy["price"] - buy["fees"] + sell["qty"] * sell["price"] - sell["fees"]
    assert res.cash[-1, 0] == pytest.approx(cash, abs=1e-9)
    assert res.equity[-1, 0] == pytest.approx(cash, abs=1e-9)
    assert res.extras["fees"][0] == pytest.approx(buy["fees"] + sell["fees"])


def test_an_entry_never_spends_more_cash_than_there_is() -> None:
    # a tiny account: the sizing at the close says 1 share, the gap up at the open makes it unaffordable
    strat = strategy(fee_per_order=5.0, risk_per_trade=0.1, exposure_cap=1.0, min_slots=1, max_positions=1)
    inputs = make_inputs(3, [(0, "NVDA", 0.6)], bars={(1, "NVDA"): {"open": 118.0}})
    res = strat.run_inputs(inputs, init_cash=120.0)
    assert decision(res.decisions[0], 0, "NVDA") == "actionable"  # 1 share at the $100 close
    assert len(res.orders) == 0 and res.cash[-1, 0] == 120.0  # $118.02 + $5 fee at the open: not bought


def test_the_kelly_cap_stops_entries_after_a_losing_record() -> None:
    from strategies.rules.risk import kelly_fraction_nb

    assert kelly_fraction_nb(10, 6, 600.0, 200.0) == pytest.approx(0.6 - 0.4 / ((600 / 6) / (200 / 4)))
    assert np.isnan(kelly_fraction_nb(3, 0, 0.0, 30.0))
    # two stop-outs, then a take-profit twice their size: Kelly f = 1/3 - (2/3) / 2 = 0, so no more risk
    scores = [(0, "NVDA", 0.6), (3, "TSLA", 0.6), (6, "AAPL", 0.6), (9, "MSFT", 0.6)]
    bars = {(2, "NVDA"): {"low": 90.0}, (5, "TSLA"): {"low": 90.0}, (8, "AAPL"): {"high": 110.0}}
    inputs = make_inputs(12, scores, bars=bars)
    off = strategy().run_inputs(inputs).decisions[0]
    on = strategy(kelly_cap=0.5, kelly_min_trades=3).run_inputs(inputs).decisions[0]
    assert decision(off, 9, "MSFT") == "actionable"
    assert decision(on, 9, "MSFT") == "risk"
