"""Stops that trigger and partial fills, seen the way a user sees them: alpaca-py's TradingStream in step mode."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pytest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce, TradeEvent
from alpaca.trading.requests import MarketOrderRequest, StopOrderRequest
from alpaca.trading.stream import TradingStream

from data.bars import Panel
from live.sim import SimConfig, SimServer
from strategies.fills import market_fill_price_nb, stop_fill_price_nb

SYMS = ("AAA", "BBB")
STOP = 98.0
DROP = 3  # the bar whose low trades through STOP (its open is above it)


def _panel() -> Panel:
    """AAA sits near 100 and bar DROP trades down through 98; BBB trades only 1,000 shares a minute."""
    n = 8
    idx = pd.date_range("2024-11-01 14:00", periods=n, freq="1min", tz="UTC")
    open_ = np.column_stack([np.full(n, 100.0), np.full(n, 20.0)])
    close = open_ + 0.05
    high, low = close + 0.2, open_ - 0.2
    open_[DROP, 0], low[DROP, 0], close[DROP, 0] = 99.0, 97.1, 97.5
    volume = np.column_stack([np.full(n, 1e6), np.full(n, 1_000.0)])
    return Panel(index=idx, symbols=SYMS, open=open_, high=high, low=low, close=close, volume=volume)


class _Updates:
    """trade_updates collected on the stream's thread; `wait_for` polls with a timeout."""

    def __init__(self) -> None:
        self.items: list = []
        self.lock = threading.Lock()

        async def handler(msg) -> None:
            with self.lock:
                self.items.append(msg)

        self.handler = handler

    def of(self, order_id) -> list:
        with self.lock:
            return [u for u in self.items if str(u.order.id) == str(order_id)]

    def wait_for(self, order_id, pred: Callable, timeout: float = 10.0) -> list:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            hits = [u for u in self.of(order_id) if pred(u)]
            if hits:
                return hits
            time.sleep(0.02)
        raise AssertionError(f"no matching trade update for {order_id}: {[u.event for u in self.of(order_id)]}")


@pytest.fixture()
def env() -> Iterator[dict]:
    sim = SimServer(_panel(), SimConfig(slippage=0.001, max_volume_share=0.1)).start()
    tc = TradingClient(sim.api_key, sim.secret_key, url_override=sim.url)
    tc._retry = 0
    updates = _Updates()
    ts = TradingStream(sim.api_key, sim.secret_key, url_override=sim.trade_stream_url)
    ts.subscribe_trade_updates(updates.handler)
    th = threading.Thread(target=ts.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not sim.hub.trade_listeners:
        time.sleep(0.05)
    assert sim.hub.trade_listeners, "TradingStream did not connect to the sim"
    yield {"sim": sim, "tc": tc, "updates": updates}
    ts.stop()
    sim.stop()
    th.join(10)
    assert not th.is_alive(), "the stream thread did not stop"


def test_sell_stop_below_the_market_fills_on_the_bar_that_trades_through_it(env: dict) -> None:
    sim, tc, updates = env["sim"], env["tc"], env["updates"]
    p = sim.engine.panel
    buy = tc.submit_order(MarketOrderRequest(symbol="AAA", qty=10, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
    sim.step()
    updates.wait_for(buy.id, lambda u: u.event == TradeEvent.FILL)
    stop = tc.submit_order(StopOrderRequest(symbol="AAA", qty=10, side=OrderSide.SELL, stop_price=STOP,
                                            time_in_force=TimeInForce.GTC))
    assert stop.status.value == "new" and float(stop.stop_price) == STOP
    while sim.engine.k < DROP:  # bars above the stop: it rests, nothing fills
        sim.step()
    assert tc.get_order_by_id(stop.id).status.value == "new"
    updates.wait_for(stop.id, lambda u: u.event == TradeEvent.NEW)  # the stream may trail the REST answer
    assert [u.event for u in updates.of(stop.id)] == [TradeEvent.PENDING_NEW, TradeEvent.NEW]

    sim.step()  # bar DROP: open 99 > 98 > low 97.1
    fill = updates.wait_for(stop.id, lambda u: u.event == TradeEvent.FILL)[0]
    want = stop_fill_price_nb(-1, STOP, p.open[DROP, 0], p.high[DROP, 0], p.low[DROP, 0])
    assert want == STOP  # traded through inside the bar: the stop price, not the open
    assert fill.price == want and fill.qty == 10 and fill.position_qty == 0
    assert pd.Timestamp(fill.order.filled_at) == p.index[DROP]
    got = tc.get_order_by_id(stop.id)
    assert got.status.value == "filled" and float(got.filled_avg_price) == want
    assert [p_.symbol for p_ in tc.get_all_positions()] == []


def test_an_order_above_the_volume_cap_arrives_as_partial_fills_then_a_fill(env: dict) -> None:
    sim, tc, updates = env["sim"], env["tc"], env["updates"]
    p = sim.engine.panel
    o = tc.submit_order(MarketOrderRequest(symbol="BBB", qty=250, side=OrderSide.BUY, time_in_force=TimeInForce.GTC))
    sim.step()  # 10% of 1,000 shares may trade per bar: 100 now
    part = updates.wait_for(o.id, lambda u: u.event == TradeEvent.PARTIAL_FILL)[0]
    assert part.qty == 100 and part.position_qty == 100
    assert part.price == round(market_fill_price_nb(p.open[0, 1], 1, 0.001), 9)
    assert part.order.status.value == "partially_filled" and float(part.order.filled_qty) == 100
    assert float(tc.get_order_by_id(o.id).filled_qty) == 100
    sim.step(2)
    fill = updates.wait_for(o.id, lambda u: u.event == TradeEvent.FILL)[0]
    events = [(u.event, u.qty) for u in updates.of(o.id)]
    assert events == [(TradeEvent.PENDING_NEW, None), (TradeEvent.NEW, None), (TradeEvent.PARTIAL_FILL, 100),
                      (TradeEvent.PARTIAL_FILL, 100),
                      (TradeEvent.FILL, 50)]
    assert fill.position_qty == 250 and float(tc.get_open_position("BBB").qty) == 250


def test_trading_stream_refuses_a_wrong_key(env: dict) -> None:
    sim = env["sim"]
    listeners = set(sim.hub.trade_listeners)
    bad = TradingStream("nope", "wrong", url_override=sim.trade_stream_url)

    async def auth() -> None:
        await bad._connect()
        try:
            await bad._auth()
        finally:
            await bad.close()

    with pytest.raises(ValueError, match="failed to authenticate"):
        asyncio.run(auth())
    assert sim.hub.trade_listeners == listeners  # nothing was added for the wrong key
