"""live.broker.AlpacaBroker against live.sim: exactly-once orders through 429s, 5xx and lost answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data.bars import Panel
from live.broker import AlpacaBroker
from live.sim import ManualClock, SimConfig, SimServer
from strategies.intents import OrderIntent, client_order_id
from tierlab.errors import BrokerError, ConfigError

T0 = pd.Timestamp("2024-11-01 14:00", tz="UTC")


def _panel() -> Panel:
    idx = pd.date_range("2024-11-01 13:30", periods=20, freq="1min", tz="UTC")
    one = np.full((len(idx), 2), 10.0)
    return Panel(index=idx, symbols=("AAA", "BBB"), open=one, high=one + 0.1, low=one - 0.1, close=one,
                 volume=np.full((len(idx), 2), 1e7))


@pytest.fixture
def sim_and_clock():
    clock = ManualClock()
    with SimServer(_panel(), SimConfig(initial_cash=1e6), clock=clock) as sim:
        yield sim, clock


def _broker(sim: SimServer, clock: ManualClock, **kw) -> AlpacaBroker:
    # the adapter's sleep moves the sim's rate-limit clock: a minute passes without waiting for it
    return AlpacaBroker(sim.api_key, sim.secret_key, url=sim.url, sleep=clock.advance, now=clock, **kw)


def _intent(i: int, **kw) -> OrderIntent:
    fields = {"strategy": "tiered", "symbol": "AAA", "side": "buy", "qty": 1, **kw}
    return OrderIntent(bar_time=T0 + pd.Timedelta(minutes=i), **fields)


def test_client_order_id_is_deterministic_and_distinct() -> None:
    a = client_order_id("tiered", "nvda", T0, "entry")
    assert a == client_order_id("tiered", "NVDA", T0.tz_convert("America/New_York"), "entry")
    others = {client_order_id("tiered", "NVDA", T0 + pd.Timedelta(minutes=1), "entry"),
              client_order_id("tiered", "NVDA", T0, "exit"), client_order_id("other", "NVDA", T0, "entry"),
              client_order_id("tiered", "AAPL", T0, "entry")}
    assert a not in others and len(others) == 4 and len(a) <= 64
    with pytest.raises(ConfigError, match="tz-aware"):
        client_order_id("tiered", "NVDA", pd.Timestamp("2024-11-01 14:00"), "entry")


def test_burst_of_250_orders_gets_429_after_200_and_retries_place_each_exactly_once(sim_and_clock) -> None:
    sim, clock = sim_and_clock
    broker = _broker(sim, clock)
    placed = [broker.submit(_intent(i)) for i in range(250)]
    assert sim.hub.limiter.rejected >= 1  # the sim answered 429 past the 200th request in the window
    cids = sim.call(lambda: [o.client_order_id for o in sim.engine.orders.values()])
    assert len(cids) == 250 and len(set(cids)) == 250
    assert {o.client_order_id for o in placed} == {_intent(i).client_order_id for i in range(250)}
    # running the same decisions again (a restart) places nothing new
    again = [broker.submit(_intent(i)) for i in (0, 137, 249)]
    assert [str(o.id) for o in again] == [str(placed[i].id) for i in (0, 137, 249)]
    assert sim.call(lambda: len(sim.engine.orders)) == 250


def test_lost_answer_after_accept_is_not_placed_twice(sim_and_clock) -> None:
    sim, clock = sim_and_clock
    broker = _broker(sim, clock)
    sim.inject_fault(504, after_accept=True)  # accepted, then the answer is lost
    sim.inject_fault(503)  # and the retry meets a plain outage first
    order = broker.submit(_intent(1))
    orders = sim.call(lambda: list(sim.engine.orders.values()))
    assert len(orders) == 1 and str(order.id) == orders[0].id
    assert order.client_order_id == _intent(1).client_order_id


def test_refusals_are_broker_errors_without_keys(sim_and_clock) -> None:
    sim, clock = sim_and_clock
    broker = _broker(sim, clock)
    with pytest.raises(BrokerError) as ei:
        broker.submit(_intent(2, qty=10_000_000))
    e = ei.value
    assert (e.status, e.retryable) == (403, False) and "insufficient buying power" in str(e)
    assert "AAA" in str(e) and sim.api_key not in str(e) and sim.secret_key not in str(e)
    bad = AlpacaBroker("wrong-key", "wrong-secret", url=sim.url, sleep=clock.advance, now=clock)
    with pytest.raises(BrokerError) as ei:
        bad.account()
    assert ei.value.status in (401, 403) and not ei.value.retryable and "wrong-secret" not in str(ei.value)


def test_persistent_5xx_gives_up_as_retryable(sim_and_clock) -> None:
    sim, clock = sim_and_clock
    broker = _broker(sim, clock, max_attempts=3)
    sim.inject_fault(500, count=3)
    with pytest.raises(BrokerError) as ei:
        broker.submit(_intent(3))
    assert ei.value.retryable and ei.value.status == 500
    assert sim.call(lambda: len(sim.engine.orders)) == 0


def test_reconcile_reports_open_orders_and_positions(sim_and_clock) -> None:
    sim, clock = sim_and_clock
    broker = _broker(sim, clock)
    filled = broker.submit(_intent(4))
    sim.step()
    resting = broker.submit(_intent(5, type="limit", limit_price=5.0, time_in_force="gtc"))
    bracket = broker.submit(OrderIntent(strategy="tiered", symbol="BBB", side="buy", qty=2, bar_time=T0,
                                        take_profit=11.0, stop_loss=9.0))
    rec = broker.reconcile()
    assert set(rec.open_orders) == {resting.client_order_id, bracket.client_order_id}
    assert rec.positions == {"AAA": 1.0}
    assert rec.cash == pytest.approx(1e6 - float(broker.order_by_client_id(filled.client_order_id).filled_avg_price))
    broker.cancel(str(resting.id))
    assert {o.client_order_id for o in broker.open_orders()} == {bracket.client_order_id}


def test_from_env_needs_keys_unless_given_a_sim(monkeypatch, sim_and_clock) -> None:
    sim, _ = sim_and_clock
    monkeypatch.delenv("ALPACA_API_KEY", raising=False)
    monkeypatch.delenv("ALPACA_SECRET_KEY", raising=False)
    with pytest.raises(ConfigError, match="ALPACA_API_KEY"):
        AlpacaBroker.from_env()
    assert AlpacaBroker.from_env(sim_url=sim.url).account().status.value == "ACTIVE"


def test_order_bodies_are_what_alpaca_py_sends_byte_for_byte() -> None:
    """The order path builds its JSON without pydantic: every intent shape gives alpaca-py's very body, and
    what alpaca-py refuses is still refused by alpaca-py."""
    import itertools
    import json

    from alpaca.trading.enums import OrderClass, OrderSide, TimeInForce
    from alpaca.trading.requests import LimitOrderRequest, StopLossRequest, TakeProfitRequest
    from pydantic import ValidationError

    from live.broker import _order_request, oco_sell_body, order_body

    prices = {"market": {}, "limit": {"limit_price": 10.25}, "stop": {"stop_price": 9.5},
              "stop_limit": {"stop_price": 9.5, "limit_price": 9.4}}
    exits = ({}, {"take_profit": 11.0, "stop_loss": 9.0}, {"take_profit": 11.0}, {"stop_loss": 9})
    n = 0
    for (typ, px), side, qty, tif, ex in itertools.product(prices.items(), ("buy", "sell"), (3, 2.5),
                                                          ("day", "gtc", "opg", "cls", "ioc", "fok"), exits):
        it = _intent(1, type=typ, side=side, qty=qty, time_in_force=tif, **px, **ex)
        want = _order_request(it, "tl-x").to_request_fields()
        assert json.dumps(order_body(it, "tl-x")) == json.dumps(want), it
        n += 1
    assert n == 4 * 2 * 2 * 6 * 4
    for bad in (_intent(1, type="limit"), _intent(1, type="stop_limit", stop_price=9.5),
                _intent(1, time_in_force="week")):
        with pytest.raises((ValidationError, ValueError)) as mine:
            order_body(bad, "tl-x")
        with pytest.raises((ValidationError, ValueError)) as theirs:
            _order_request(bad, "tl-x")
        assert type(mine.value) is type(theirs.value)
    oco = LimitOrderRequest(symbol="AAA", qty=7, side=OrderSide.SELL, time_in_force=TimeInForce.DAY,
                            limit_price=10.51, order_class=OrderClass.OCO, client_order_id="tl-p",
                            take_profit=TakeProfitRequest(limit_price=10.51), stop_loss=StopLossRequest(stop_price=9.5))
    assert json.dumps(oco_sell_body("AAA", 7, 10.51, 9.5, "tl-p")) == json.dumps(oco.to_request_fields())
