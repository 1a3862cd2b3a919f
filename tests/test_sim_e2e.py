"""End to end through alpaca-py's public classes against live.sim on a free loopback port.

Every order type, its trade_updates on TradingStream, cancel/replace, positions/account, each
rejection with Alpaca's status, minute bars on StockDataStream and paginated /v2/stocks/bars.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pytest
from alpaca.common.exceptions import APIError
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.live import StockDataStream
from alpaca.data.requests import StockBarsRequest
from alpaca.data.timeframe import TimeFrame
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderClass, OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    ClosePositionRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLimitOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
)
from alpaca.trading.stream import TradingStream

from data.bars import Panel
from live.sim import SimConfig, SimServer

SYMS = ("AAA", "BBB")


def _panel() -> Panel:
    """Two symbols over one short session: flat-ish prices near 100 with known highs/lows."""
    idx = pd.date_range("2024-11-01 13:30", periods=40, freq="1min", tz="UTC")
    t = np.arange(len(idx), dtype=float)[:, None]
    close = 100.0 + 0.05 * t + np.array([[0.0, 10.0]])
    open_ = close - 0.02
    return Panel(index=idx, symbols=SYMS, open=open_, high=close + 0.3, low=open_ - 0.3, close=close,
                 volume=np.full((len(idx), 2), 50_000.0))


class _Collector:
    """Collects stream messages from the stream's thread; `wait_for` polls with a timeout."""

    def __init__(self) -> None:
        self.items: list = []
        self.lock = threading.Lock()

        async def handler(msg) -> None:  # alpaca-py wants a coroutine function
            with self.lock:
                self.items.append(msg)

        self.handler = handler

    def wait_for(self, pred: Callable, timeout: float = 10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                hits = [m for m in self.items if pred(m)]
            if hits:
                return hits
            time.sleep(0.02)
        raise AssertionError(f"no stream message matched within {timeout}s; got {len(self.items)} messages")


@pytest.fixture(scope="module")
def env() -> Iterator[dict]:
    sim = SimServer(_panel(), SimConfig(slippage=0.001, initial_cash=100_000.0)).start()
    tc = TradingClient(sim.api_key, sim.secret_key, url_override=sim.url)
    tc._retry = 0  # fail fast in tests; the adapter owns retries
    updates, bars = _Collector(), _Collector()
    ts = TradingStream(sim.api_key, sim.secret_key, url_override=sim.trade_stream_url)
    ts.subscribe_trade_updates(updates.handler)
    ds = StockDataStream(sim.api_key, sim.secret_key, url_override=sim.data_stream_url)
    ds.subscribe_bars(bars.handler, *SYMS)
    threads = [threading.Thread(target=s.run, daemon=True) for s in (ts, ds)]
    for th in threads:
        th.start()
    # both streams are connected once the sim has registered their subscriptions
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (sim.hub.trade_listeners and sim.hub.bar_subs):
        time.sleep(0.05)
    assert sim.hub.trade_listeners and sim.hub.bar_subs, "streams did not connect to the sim"
    yield {"sim": sim, "tc": tc, "updates": updates, "bars": bars}
    ts.stop()
    ds.stop()
    sim.stop()  # closing the sockets wakes the streams' receive loops, which then see the stop
    for th in threads:
        th.join(10)
    assert not any(th.is_alive() for th in threads), "a stream thread did not stop"


def _events(updates: _Collector, order_id, event: str):
    return updates.wait_for(lambda u: str(u.order.id) == str(order_id) and u.event == event)


def _status(e: APIError) -> int:
    return e.status_code


def test_orders_streams_positions_and_rejections(env: dict) -> None:
    sim, tc, updates, bars = env["sim"], env["tc"], env["updates"], env["bars"]
    acct = tc.get_account()
    assert float(acct.cash) == 100_000.0 and acct.status.value == "ACTIVE"
    assert {a.symbol for a in tc.get_all_assets()} == set(SYMS)
    assert tc.get_asset("AAA").tradable and tc.get_asset("AAA").fractionable
    assert tc.get_clock().is_open

    # --- market buy: new now, fill at the next bar's open (+ slippage) after a step
    mkt = tc.submit_order(MarketOrderRequest(symbol="AAA", qty=10, side=OrderSide.BUY,
                                             time_in_force=TimeInForce.DAY, client_order_id="e2e-mkt"))
    _events(updates, mkt.id, "new")
    sim.step()
    fill = _events(updates, mkt.id, "fill")[0]
    assert fill.qty == 10 and fill.position_qty == 10
    pos = tc.get_open_position("AAA")
    assert float(pos.qty) == 10 and pos.side.value == "long"
    assert float(pos.avg_entry_price) == pytest.approx(fill.price)
    assert tc.get_order_by_client_id("e2e-mkt").status.value == "filled"
    bars.wait_for(lambda b: b.symbol == "AAA" and b.timestamp == pd.Timestamp("2024-11-01 13:30", tz="UTC"))

    # --- limit below the market rests, is replaced, then canceled
    lim = tc.submit_order(LimitOrderRequest(symbol="AAA", qty=5, side=OrderSide.BUY, limit_price=90.0,
                                            time_in_force=TimeInForce.GTC))
    _events(updates, lim.id, "new")
    sim.step()
    assert tc.get_order_by_id(lim.id).status.value == "new"
    new = tc.replace_order_by_id(lim.id, ReplaceOrderRequest(limit_price=91.0, qty=6))
    assert new.replaces == lim.id and float(new.limit_price) == 91.0 and float(new.qty) == 6
    _events(updates, lim.id, "replaced")
    assert tc.get_order_by_id(lim.id).status.value == "replaced"
    tc.cancel_order_by_id(new.id)
    _events(updates, new.id, "canceled")
    with pytest.raises(APIError) as ei:
        tc.cancel_order_by_id(new.id)
    assert _status(ei.value) == 422

    # --- stop and stop-limit sells against the held shares (far away: they rest), then cancel all
    stp = tc.submit_order(StopOrderRequest(symbol="AAA", qty=2, side=OrderSide.SELL, stop_price=50.0,
                                           time_in_force=TimeInForce.GTC))
    stl = tc.submit_order(StopLimitOrderRequest(symbol="AAA", qty=2, side=OrderSide.SELL, stop_price=50.0,
                                                limit_price=49.0, time_in_force=TimeInForce.DAY))
    _events(updates, stp.id, "new")
    open_ids = {str(o.id) for o in tc.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))}
    assert {str(stp.id), str(stl.id)} <= open_ids
    canceled = tc.cancel_orders()
    assert {str(c.id) for c in canceled} >= {str(stp.id), str(stl.id)} and all(c.status == 200 for c in canceled)
    _events(updates, stl.id, "canceled")

    # --- a limit buy above the market fills at the open (the bar is already through it)
    lim2 = tc.submit_order(LimitOrderRequest(symbol="BBB", qty=3, side=OrderSide.BUY, limit_price=200.0,
                                             time_in_force=TimeInForce.IOC))
    sim.step()
    f2 = _events(updates, lim2.id, "fill")[0]
    k = sim.engine.k - 1
    assert f2.price == pytest.approx(sim.engine.panel.open[k, 1])

    # --- bracket: entry fills, legs go live, take-profit fills, stop leg canceled
    px = sim.engine.panel.close[sim.engine.k - 1, 0]
    br = tc.submit_order(MarketOrderRequest(symbol="AAA", qty=4, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                                            order_class=OrderClass.BRACKET,
                                            take_profit=TakeProfitRequest(limit_price=round(px + 0.4, 2)),
                                            stop_loss=StopLossRequest(stop_price=round(px - 5, 2))))
    assert br.order_class == OrderClass.BRACKET and len(br.legs) == 2
    assert {leg.status.value for leg in br.legs} == {"held"}
    sim.step()
    _events(updates, br.id, "fill")
    tp_leg = next(leg for leg in br.legs if leg.type.value == "limit")
    sl_leg = next(leg for leg in br.legs if leg.type.value == "stop")
    _events(updates, tp_leg.id, "new")
    sim.step(8)
    _events(updates, tp_leg.id, "fill")
    _events(updates, sl_leg.id, "canceled")

    # --- oco exit on the remaining AAA shares: both sides rest, cancel removes both
    oco = tc.submit_order(LimitOrderRequest(symbol="AAA", qty=2, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
                                            order_class=OrderClass.OCO, limit_price=500.0,
                                            take_profit=TakeProfitRequest(limit_price=500.0),
                                            stop_loss=StopLossRequest(stop_price=10.0)))
    assert len(oco.legs) == 1
    tc.cancel_order_by_id(oco.id)
    _events(updates, oco.legs[0].id, "canceled")

    # --- rejections, each with Alpaca's status and error JSON
    def rejected(req) -> APIError:
        with pytest.raises(APIError) as ei:
            tc.submit_order(req)
        return ei.value

    e = rejected(MarketOrderRequest(symbol="AAA", qty=100_000, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
    assert (_status(e), e.code, e.message) == (403, 40310000, "insufficient buying power")
    e = rejected(MarketOrderRequest(symbol="AAA", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                                    client_order_id="e2e-mkt"))
    assert (_status(e), e.message) == (422, "client_order_id must be unique")
    e = rejected(MarketOrderRequest(symbol="AAA", qty=0, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
    assert (_status(e), e.message) == (422, "qty must be > 0")
    e = rejected(MarketOrderRequest(symbol="ZZZZ", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
    assert _status(e) == 422 and "ZZZZ" in e.message
    e = rejected(MarketOrderRequest(symbol="BBB", qty=100, side=OrderSide.SELL, time_in_force=TimeInForce.DAY))
    assert _status(e) == 403 and "insufficient qty" in e.message
    resting = tc.submit_order(LimitOrderRequest(symbol="BBB", qty=1, side=OrderSide.SELL, limit_price=300.0,
                                                time_in_force=TimeInForce.DAY))
    e = rejected(MarketOrderRequest(symbol="BBB", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
    assert _status(e) == 422 and "wash trade" in e.message  # Alpaca answers 422 / 42210000
    tc.cancel_order_by_id(resting.id)

    # --- account and positions agree with the fills; close a position via alpaca-py
    acct = tc.get_account()
    positions = {p.symbol: p for p in tc.get_all_positions()}
    mv = sum(float(p.market_value) for p in positions.values())
    assert float(acct.equity) == pytest.approx(float(acct.cash) + mv)
    close = tc.close_position("BBB", ClosePositionRequest(qty="1"))
    sim.step()
    _events(updates, close.id, "fill")
    assert float(tc.get_open_position("BBB").qty) == 2

    # --- market closed: run out the session; an order is accepted and queued (Alpaca's "accepted")
    sim.step(100)
    assert not tc.get_clock().is_open
    queued = tc.submit_order(MarketOrderRequest(symbol="AAA", qty=1, side=OrderSide.BUY,
                                                time_in_force=TimeInForce.DAY))
    assert queued.status.value == "accepted"
    _events(updates, queued.id, "accepted")


def test_bars_history_paginates_and_never_shows_the_future(env: dict) -> None:
    sim = env["sim"]
    dc = StockHistoricalDataClient(sim.api_key, sim.secret_key, url_override=sim.url)
    closed = sim.engine.k
    req = StockBarsRequest(symbol_or_symbols=list(SYMS), timeframe=TimeFrame.Minute)
    got = dc.get_stock_bars(req).data
    assert [len(got[s]) for s in SYMS] == [closed, closed]
    raw = dc.get(  # one page by hand: limit 7 -> a next_page_token (test_sim_http follows tokens to the end)
        "/stocks/bars", {"symbols": "AAA,BBB", "timeframe": "1Min", "limit": 7})
    assert raw["next_page_token"] and sum(len(v) for v in raw["bars"].values()) == 7
    assert got["AAA"][0].open == sim.engine.panel.open[0, 0]


def test_wrong_keys_are_refused_on_rest_and_streams(env: dict) -> None:
    sim = env["sim"]
    bad = TradingClient("nope", "wrong", url_override=sim.url)
    bad._retry = 0
    with pytest.raises(APIError) as ei:
        bad.get_account()
    assert ei.value.status_code == 401 and ei.value.code == 40110000  # Alpaca: 401 "request is not authorized"
    ws = StockDataStream("nope", "wrong", url_override=sim.data_stream_url)

    async def auth() -> None:
        await ws._connect()
        await ws._auth()

    with pytest.raises(ValueError, match="auth failed"):
        asyncio.run(auth())
