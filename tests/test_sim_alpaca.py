"""Alpaca's account and order semantics in the sim, end to end through alpaca-py (TradingClient, TradingStream).

Each test names the Alpaca behaviour it follows (docs.alpaca.markets: orders-at-alpaca, margin and short
selling, the account and activities references, the trading-api-errors guide).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pytest
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderClass, OrderSide, OrderType, TimeInForce
from alpaca.trading.models import NonTradeActivity, PortfolioHistory, TradeActivity
from alpaca.trading.requests import (
    GetPortfolioHistoryRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    OrderRequest,
    ReplaceOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
    TrailingStopOrderRequest,
)
from alpaca.trading.stream import TradingStream

from data.bars import Panel
from live.sim import AssetFlags, SimConfig, SimServer
from live.sim.wire import num
from strategies.fills import market_fill_price_nb, stop_fill_price_nb

SYMS = ("AAA", "NOSH", "HTB", "WHOLE", "PNY")
ASSETS = {"NOSH": AssetFlags(shortable=False), "HTB": AssetFlags(easy_to_borrow=False),
          "WHOLE": AssetFlags(exchange="NYSE", fractionable=False), "PNY": AssetFlags(marginable=False)}
N1 = N2 = 20  # bars in each of the two sessions


def _panel() -> Panel:
    """Two sessions (Fri 2024-11-01 and Mon 2024-11-04), AAA rising 5 cents a minute, the rest flat."""
    idx = pd.DatetimeIndex([*pd.date_range("2024-11-01 13:30", periods=N1, freq="1min", tz="UTC"),
                            *pd.date_range("2024-11-04 14:30", periods=N2, freq="1min", tz="UTC")])
    t = np.arange(len(idx), dtype=float)
    close = np.column_stack([100.0 + 0.05 * t, np.full_like(t, 20.0), np.full_like(t, 30.0), np.full_like(t, 50.0),
                             np.full_like(t, 0.5)])
    open_ = close - np.array([0.02, 0.02, 0.02, 0.02, 0.0])
    open_[N1, 0] = 103.37  # Monday opens with a gap
    return Panel(index=idx, symbols=SYMS, open=open_, high=close + 0.2, low=open_ - 0.2, close=close,
                 volume=np.full(close.shape, 1e6))


class _Updates:
    """trade_updates collected on the stream's thread."""

    def __init__(self) -> None:
        self.items: list = []
        self.lock = threading.Lock()

        async def handler(msg) -> None:
            with self.lock:
                self.items.append(msg)

        self.handler = handler

    def events(self, order_id) -> list[str]:
        with self.lock:
            return [str(getattr(u.event, "value", u.event)) for u in self.items if str(u.order.id) == str(order_id)]

    def wait(self, order_id, event: str, timeout: float = 10.0) -> list:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                hits = [u for u in self.items
                        if str(u.order.id) == str(order_id) and str(getattr(u.event, "value", u.event)) == event]
            if hits:
                return hits
            time.sleep(0.02)
        raise AssertionError(f"no {event} for {order_id}: {self.events(order_id)}")


def _start(config: SimConfig, stream: bool = True) -> tuple[SimServer, TradingClient, _Updates, Callable[[], None]]:
    sim = SimServer(_panel(), config, assets=ASSETS, rate_limit=1_000_000).start()
    tc = TradingClient(sim.api_key, sim.secret_key, url_override=sim.url)
    tc._retry = 0
    updates = _Updates()
    if not stream:
        return sim, tc, updates, sim.stop
    ts = TradingStream(sim.api_key, sim.secret_key, url_override=sim.trade_stream_url)
    ts.subscribe_trade_updates(updates.handler)
    th = threading.Thread(target=ts.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not sim.hub.trade_listeners:
        time.sleep(0.05)
    assert sim.hub.trade_listeners, "TradingStream did not connect"

    def stop() -> None:
        ts.stop()
        sim.stop()
        th.join(10)

    return sim, tc, updates, stop


@pytest.fixture()
def margin() -> Iterator[tuple[SimServer, TradingClient, _Updates]]:
    sim, tc, updates, stop = _start(SimConfig(slippage=0.001))
    yield sim, tc, updates
    stop()


def _rejected(tc: TradingClient, req) -> APIError:
    with pytest.raises(APIError) as ei:
        tc.submit_order(req)
    return ei.value


def _mkt(symbol: str, qty: float | None, side: OrderSide, **kw):
    return MarketOrderRequest(symbol=symbol, qty=qty, side=side, time_in_force=kw.pop("tif", TimeInForce.DAY), **kw)


# ------------------------------------------------------------------ margin, shorting, cash accounts
def test_a_margin_account_by_default_sells_short_and_reports_alpacas_buying_powers(margin) -> None:
    """Alpaca paper: margin account, multiplier 4 at >= $25,000 (PDT-eligible), shorting enabled; a sale opens a short."""
    sim, tc, updates = margin
    a = tc.get_account()
    assert (a.multiplier, a.shorting_enabled) == ("4", True)
    assert float(a.buying_power) == float(a.daytrading_buying_power) == 400_000  # 4 x (last_equity - last_mm)
    assert float(a.regt_buying_power) == 200_000 and float(a.non_marginable_buying_power) == 100_000
    short = tc.submit_order(_mkt("AAA", 10, OrderSide.SELL))
    sim.step()
    fill = updates.wait(short.id, "fill")[0]
    assert fill.position_qty == -10
    price = round(market_fill_price_nb(sim.engine.panel.open[0, 0], -1, 0.001), 9)
    assert fill.price == price
    pos = tc.get_open_position("AAA")
    assert (pos.side.value, float(pos.qty), float(pos.avg_entry_price)) == ("short", -10, price)
    px = sim.engine.panel.close[0, 0]
    assert float(pos.market_value) == pytest.approx(-10 * px)
    a = tc.get_account()
    assert float(a.short_market_value) == pytest.approx(-10 * px, abs=0.01)
    assert float(a.cash) == pytest.approx(100_000 + 10 * price, abs=0.01)
    assert float(a.equity) == pytest.approx(float(a.cash) - 10 * px, abs=0.01)
    assert float(a.regt_buying_power) == pytest.approx(2 * (float(a.equity) - 0.5 * 10 * px), abs=0.02)
    assert float(a.daytrading_buying_power) == pytest.approx(400_000 - 10 * price, abs=0.02)  # used by today's short
    # more than the short cannot be bought in one order; covering it closes the position
    e = _rejected(tc, _mkt("AAA", 11, OrderSide.BUY))
    assert (e.status_code, e.code) == (403, 40310000) and "insufficient qty" in e.message
    cover = tc.close_position("AAA")  # DELETE /v2/positions/AAA on a short: a market buy to cover
    assert (cover.side.value, float(cover.qty)) == ("buy", 10)
    sim.step()
    assert updates.wait(cover.id, "fill")[0].position_qty == 0
    assert tc.get_all_positions() == []


def test_small_margin_account_has_multiplier_2_and_no_day_trading_power() -> None:
    """Alpaca: under $25,000 a margin account has 2x Reg T buying power; under $2,000, 1x and no shorting."""
    for cash, mult, bp, shorting in ((10_000.0, "2", 20_000, True), (1_500.0, "1", 1_500, False)):
        _sim, tc, _, stop = _start(SimConfig(initial_cash=cash), stream=False)
        try:
            a = tc.get_account()
            assert (a.multiplier, float(a.buying_power), float(a.daytrading_buying_power), a.shorting_enabled) == (
                mult, bp, 0, shorting)
        finally:
            stop()


def test_a_cash_account_refuses_a_short_sale() -> None:
    """`--account cash`: multiplier 1, no shorting (Alpaca: 403 40310000 "account is not allowed to short")."""
    sim, tc, _, stop = _start(SimConfig(account="cash"), stream=False)
    try:
        a = tc.get_account()
        assert (a.multiplier, a.shorting_enabled, float(a.buying_power)) == ("1", False, 100_000)
        e = _rejected(tc, _mkt("AAA", 1, OrderSide.SELL))
        assert (e.status_code, e.code, e.message) == (403, 40310000, "account is not allowed to short")
        assert sim.engine.orders == {}
    finally:
        stop()


def test_short_sales_follow_each_assets_flags(margin) -> None:
    """Alpaca: not shortable -> 422 'cannot be sold short'; hard to borrow -> day orders only; no fractional shorts."""
    _sim, tc, _ = margin
    e = _rejected(tc, _mkt("NOSH", 5, OrderSide.SELL))
    assert (e.status_code, e.code, e.message) == (422, 42210000, 'asset "NOSH" cannot be sold short')
    e = _rejected(tc, LimitOrderRequest(symbol="HTB", qty=5, side=OrderSide.SELL, limit_price=31.0,
                                        time_in_force=TimeInForce.GTC))
    assert (e.status_code, e.code) == (422, 42210000) and "hard-to-borrow" in e.message
    assert tc.submit_order(LimitOrderRequest(symbol="HTB", qty=5, side=OrderSide.SELL, limit_price=31.0,
                                             time_in_force=TimeInForce.DAY)).status.value == "new"
    e = _rejected(tc, _mkt("AAA", 1.5, OrderSide.SELL))
    assert (e.status_code, e.message) == (422, "fractional orders cannot be sold short")
    flags = {a.symbol: a for a in tc.get_all_assets()}
    assert (flags["NOSH"].shortable, flags["HTB"].easy_to_borrow, flags["WHOLE"].fractionable,
            flags["WHOLE"].exchange.value, flags["PNY"].marginable, flags["AAA"].shortable) == (
        False, False, False, "NYSE", False, True)


# ------------------------------------------------------------------ the market clock
def _close_session(sim: SimServer) -> None:
    while sim.engine.is_open:
        sim.step()


def test_an_order_sent_while_closed_is_accepted_and_fills_at_the_next_open(margin) -> None:
    """Alpaca: outside market hours an order is `accepted`, routed at the open (pending_new, new), then fills."""
    sim, tc, updates = margin
    _close_session(sim)
    assert not tc.get_clock().is_open
    o = tc.submit_order(_mkt("AAA", 5, OrderSide.BUY))
    assert o.status.value == "accepted"
    gtc = tc.submit_order(LimitOrderRequest(symbol="AAA", qty=1, side=OrderSide.BUY, limit_price=50.0,
                                            time_in_force=TimeInForce.GTC))
    assert float(tc.get_account().buying_power) < 400_000  # a queued buy holds buying power
    sim.step()  # the clock moves to Monday's open: queued orders are routed
    updates.wait(o.id, "new")
    assert tc.get_order_by_id(o.id).status.value == "new" and tc.get_order_by_id(gtc.id).status.value == "new"
    sim.step()
    fill = updates.wait(o.id, "fill")[0]
    assert updates.events(o.id) == ["accepted", "pending_new", "new", "fill"]
    assert fill.price == round(market_fill_price_nb(103.37, 1, 0.001), 9)
    assert pd.Timestamp(fill.order.filled_at) == pd.Timestamp("2024-11-04 14:30", tz="UTC")


def test_extended_hours_is_for_day_limit_orders_and_works_while_closed(margin) -> None:
    """Alpaca: extended_hours=true only with type limit and time_in_force day (422 otherwise); it works at once."""
    sim, tc, updates = margin
    for req in (MarketOrderRequest(symbol="AAA", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                                   extended_hours=True),
                LimitOrderRequest(symbol="AAA", qty=1, side=OrderSide.BUY, limit_price=99.0,
                                  time_in_force=TimeInForce.GTC, extended_hours=True)):
        e = _rejected(tc, req)
        assert (e.status_code, e.code, e.message) == (422, 42210000, "extended hours order must be DAY limit orders")
    _close_session(sim)
    o = tc.submit_order(LimitOrderRequest(symbol="AAA", qty=2, side=OrderSide.BUY, limit_price=110.0,
                                          time_in_force=TimeInForce.DAY, extended_hours=True))
    assert (o.status.value, o.extended_hours) == ("new", True)  # not queued: it may trade outside the session
    sim.step(2)
    assert updates.wait(o.id, "fill")[0].price == 103.37  # the first bar the replay has (no extended-hours bars)


def test_opg_and_cls_fill_in_the_opening_and_closing_bars(margin) -> None:
    """Alpaca: opg fills in the opening auction (accepted only before it), cls in the closing one (not after 15:50)."""
    sim, tc, updates = margin
    e = _rejected(tc, _mkt("AAA", 1, OrderSide.BUY, tif=TimeInForce.OPG))
    assert (e.status_code, e.code) == (422, 42210000) and "opg" in e.message
    cls = tc.submit_order(_mkt("AAA", 3, OrderSide.BUY, tif=TimeInForce.CLS))
    assert cls.status.value == "new"
    sim.step(N1 - 1)
    assert tc.get_order_by_id(cls.id).status.value == "new"  # waits for the session's last bar
    e = _rejected(tc, _mkt("AAA", 1, OrderSide.BUY, tif=TimeInForce.CLS))  # 15:59: past the cls cut-off
    assert (e.status_code, e.code) == (422, 42210000) and "cls" in e.message
    sim.step()
    fill = updates.wait(cls.id, "fill")[0]
    p = sim.engine.panel
    assert fill.price == round(market_fill_price_nb(p.close[N1 - 1, 0], 1, 0.001), 9)
    assert pd.Timestamp(fill.order.filled_at) == p.index[N1 - 1]
    opg = tc.submit_order(LimitOrderRequest(symbol="AAA", qty=2, side=OrderSide.SELL, limit_price=103.0,
                                            time_in_force=TimeInForce.OPG))
    late = tc.submit_order(LimitOrderRequest(symbol="AAA", qty=1, side=OrderSide.SELL, limit_price=500.0,
                                             time_in_force=TimeInForce.OPG))
    assert opg.status.value == "accepted"
    sim.step(2)  # Monday's open, then its first bar
    assert updates.wait(opg.id, "fill")[0].price == 103.37  # the limit is through: the opening price
    updates.wait(late.id, "canceled")  # not filled in the opening auction: canceled


def test_trailing_stop_follows_the_high_water_mark_and_fills_when_crossed() -> None:
    """Alpaca: a sell trailing stop's stop = hwm - trail_price (or hwm x (1 - trail_percent/100)); hwm follows highs."""
    n = 8
    idx = pd.date_range("2024-11-01 13:30", periods=n, freq="1min", tz="UTC")
    high = np.array([100.2, 101.0, 103.0, 104.5, 104.0, 103.0, 101.0, 100.0])
    low = high - 0.6
    low[5] = 102.0  # 104.5 - 2.5 = 102.0: touched exactly... and bar 6 trades through
    open_ = high - 0.3
    p = Panel(index=idx, symbols=("AAA",), open=open_[:, None], high=high[:, None], low=low[:, None],
              close=(high - 0.2)[:, None], volume=np.full((n, 1), 1e6))
    with SimServer(p, SimConfig(slippage=0.0), rate_limit=1_000_000) as sim:
        tc = TradingClient(sim.api_key, sim.secret_key, url_override=sim.url)
        tc.submit_order(_mkt("AAA", 10, OrderSide.BUY))
        sim.step()
        ts = tc.submit_order(TrailingStopOrderRequest(symbol="AAA", qty=10, side=OrderSide.SELL, trail_price=2.5,
                                                      time_in_force=TimeInForce.GTC))
        assert (ts.type, float(ts.trail_price), float(ts.hwm)) == (OrderType.TRAILING_STOP, 2.5, high[0] - 0.2)
        sim.step(4)  # bars 1..4: new highs up to 104.5, lows stay above the trailing stop
        got = tc.get_order_by_id(ts.id)
        assert (got.status.value, float(got.hwm), float(got.stop_price)) == ("new", 104.5, 102.0)
        sim.step()  # bar 5: low 102.0 touches the stop
        got = tc.get_order_by_id(ts.id)
        assert got.status.value == "filled"
        assert float(got.filled_avg_price) == stop_fill_price_nb(-1, 102.0, open_[5], high[5], low[5]) == 102.0
        pct = tc.submit_order(TrailingStopOrderRequest(symbol="AAA", qty=1, side=OrderSide.BUY, trail_percent=1.0,
                                                       time_in_force=TimeInForce.DAY))
        assert float(pct.stop_price) == pytest.approx(float(pct.hwm) * 1.01)
        e = _rejected(tc, OrderRequest(symbol="AAA", qty=1, side=OrderSide.SELL, type=OrderType.TRAILING_STOP,
                                       time_in_force=TimeInForce.IOC, trail_price=1.0))
        assert (e.status_code, e.code) == (422, 42210000) and "time_in_force" in e.message


def test_notional_and_fractional_orders(margin) -> None:
    """Alpaca: notional market day orders buy a dollar amount (qty null until filled); fractional limit day orders."""
    sim, tc, updates = margin
    o = tc.submit_order(MarketOrderRequest(symbol="AAA", notional=1000, side=OrderSide.BUY,
                                           time_in_force=TimeInForce.DAY))
    assert (o.qty, float(o.notional)) == (None, 1000)
    sim.step()
    fill = updates.wait(o.id, "fill")[0]
    price = market_fill_price_nb(sim.engine.panel.open[0, 0], 1, 0.001)
    assert fill.qty == float(num(np.floor(1000 / price * 1e9) / 1e9)) and fill.price == round(price, 9)
    frac = tc.submit_order(LimitOrderRequest(symbol="AAA", qty=1.25, side=OrderSide.BUY, limit_price=150.0,
                                             time_in_force=TimeInForce.DAY))
    assert frac.qty == "1.25"
    sim.step()
    updates.wait(frac.id, "fill")
    e = _rejected(tc, LimitOrderRequest(symbol="AAA", qty=1.25, side=OrderSide.BUY, limit_price=150.0,
                                        time_in_force=TimeInForce.GTC))
    assert (e.status_code, e.code) == (422, 42210000) and "fractional" in e.message
    e = _rejected(tc, _mkt("WHOLE", 0.5, OrderSide.BUY))
    assert (e.status_code, e.code, e.message) == (403, 40310000, 'asset "WHOLE" is not fractionable')
    e = _rejected(tc, LimitOrderRequest(symbol="AAA", notional=100, side=OrderSide.BUY, limit_price=150.0,
                                        time_in_force=TimeInForce.DAY))
    assert (e.status_code, e.code) == (422, 42210000) and "notional" in e.message


# ------------------------------------------------------------------ rejections
def test_alpacas_rejections_with_their_status_and_code(margin) -> None:
    """The trading-api-errors guide: each refusal with Alpaca's HTTP status and error code; nothing is placed."""
    sim, tc, _ = margin
    base = float(sim.engine.quote("AAA"))

    def lim(**kw) -> LimitOrderRequest:
        return LimitOrderRequest(**{"symbol": "AAA", "qty": 1, "side": OrderSide.BUY, "limit_price": 99.0,
                                    "time_in_force": TimeInForce.DAY, **kw})

    cases = [
        (lim(limit_price=99.123), 422, 42210000, "invalid limit_price 99.123. sub-penny increment does not fulfill"),
        (lim(symbol="PNY", limit_price=0.12345), 422, 42210000, "invalid limit_price 0.12345. sub-penny"),
        (StopOrderRequest(symbol="AAA", qty=1, side=OrderSide.BUY, stop_price=120.005,
                          time_in_force=TimeInForce.DAY), 422, 42210000, "invalid stop_price 120.005. sub-penny"),
        (_mkt("AAA", 1, OrderSide.BUY, order_class=OrderClass.BRACKET,
              take_profit=TakeProfitRequest(limit_price=base + 5),
              stop_loss=StopLossRequest(stop_price=round(base - 0.001, 2))), 422, 42210000,
         "stop_loss.stop_price must be <= base_price - 0.01"),
        (lim(limit_price=99.0, order_class=OrderClass.BRACKET, take_profit=TakeProfitRequest(limit_price=99.0),
             stop_loss=StopLossRequest(stop_price=95.0)), 422, 42210000,
         "take_profit.limit_price must be >= base_price + 0.01"),
        (_mkt("AAA", 1, OrderSide.SELL, order_class=OrderClass.OCO, take_profit=TakeProfitRequest(limit_price=120),
              stop_loss=StopLossRequest(stop_price=90)), 422, 42210000, "oco orders must be limit orders"),
        (StopOrderRequest(symbol="AAA", qty=1, side=OrderSide.BUY, stop_price=120.0, time_in_force=TimeInForce.IOC),
         422, 42210000, "invalid time_in_force ioc for stop orders"),
        (StopOrderRequest(symbol="AAA", qty=1, side=OrderSide.BUY, stop_price=120.0, time_in_force=TimeInForce.FOK),
         422, 42210000, "invalid time_in_force fok for stop orders"),
        (lim(limit_price=0.4321, symbol="PNY", qty=10), None, None, None),  # 4 decimals below $1.00 is fine
    ]
    for req, status, code, text in cases:
        if status is None:
            assert tc.submit_order(req).status.value == "new"
            continue
        e = _rejected(tc, req)
        assert (e.status_code, e.code) == (status, code) and e.message.startswith(text), (req, e.message)
    e = _rejected(tc, _mkt("AAA", 1, OrderSide.BUY, order_class=OrderClass.BRACKET,
                           take_profit=TakeProfitRequest(limit_price=base + 5),
                           stop_loss=StopLossRequest(stop_price=base)))
    assert "base_price" in str(e)  # Alpaca's body names the base price it checked against
    resting = tc.submit_order(lim())
    with pytest.raises(APIError) as ei:  # alpaca-py itself refuses qty=0, so the PATCH goes out raw
        tc.patch(f"/orders/{resting.id}", {"qty": 0})
    assert (ei.value.status_code, ei.value.code, ei.value.message) == (422, 40010001, "qty must be > 0")
    assert tc.get_order_by_id(resting.id).status.value == "new"  # the refused PATCH changed nothing


# ------------------------------------------------------------------ statuses and legs
def test_statuses_pass_through_pending_states_and_bracket_legs_show_new_and_held(margin) -> None:
    """Alpaca: pending_new -> new; cancel pending_cancel -> canceled; replace pending_replace -> replaced;
    after a bracket's entry fills, the take-profit leg is `new` and the stop-loss leg `held`."""
    sim, tc, updates = margin
    o = tc.submit_order(LimitOrderRequest(symbol="AAA", qty=1, side=OrderSide.BUY, limit_price=90.0,
                                          time_in_force=TimeInForce.GTC))
    updates.wait(o.id, "new")
    assert updates.events(o.id) == ["pending_new", "new"]
    new = tc.replace_order_by_id(o.id, ReplaceOrderRequest(limit_price=91.0))
    updates.wait(o.id, "replaced")
    assert updates.events(o.id) == ["pending_new", "new", "pending_replace", "replaced"]
    tc.cancel_order_by_id(new.id)
    updates.wait(new.id, "canceled")
    assert updates.events(new.id)[-2:] == ["pending_cancel", "canceled"]

    px = sim.engine.quote("AAA")
    br = tc.submit_order(_mkt("AAA", 4, OrderSide.BUY, order_class=OrderClass.BRACKET,
                              take_profit=TakeProfitRequest(limit_price=round(px + 3, 2)),
                              stop_loss=StopLossRequest(stop_price=round(px - 3, 2))))
    assert [leg.status.value for leg in br.legs] == ["held", "held"]
    sim.step()
    updates.wait(br.id, "fill")
    legs = {leg.type.value: leg.status.value for leg in tc.get_order_by_id(br.id).legs}
    assert legs == {"limit": "new", "stop": "held"}
    sl = next(leg for leg in br.legs if leg.type.value == "stop")
    assert updates.events(sl.id) == []  # the stop-loss leg is held: no event until it acts
    # the held stop-loss still works: a drop through it fills it and cancels the take-profit
    sim.call(lambda: sim.engine.panel.low.__setitem__((sim.engine.k, 0), px - 4))
    sim.step()
    updates.wait(sl.id, "fill")
    tp = next(leg for leg in br.legs if leg.type.value == "limit")
    updates.wait(tp.id, "canceled")


# ------------------------------------------------------------------ activities and portfolio history
def test_activities_and_portfolio_history_parse_with_alpaca_py_models() -> None:
    """GET /v2/account/activities (FILL, FEE, CSD) and /v2/account/portfolio/history, as alpaca-py reads them."""
    sim, tc, _, stop = _start(SimConfig(slippage=0.001, fee_per_order=1.0), stream=False)
    try:
        buy = tc.submit_order(_mkt("AAA", 10, OrderSide.BUY))
        sim.step()
        sell = tc.submit_order(_mkt("AAA", 4, OrderSide.SELL))
        sim.step(N1 + 3)  # through Friday's close into Monday
        raw = tc.get("/account/activities")
        kinds = [a["activity_type"] for a in raw]
        assert kinds == ["FEE", "FILL", "FEE", "FILL", "CSD"]  # newest first
        fills = [TradeActivity(**a) for a in raw if a["activity_type"] == "FILL"]
        other = [NonTradeActivity(**a) for a in raw if a["activity_type"] != "FILL"]
        assert [(str(f.order_id), f.side.value, f.qty, f.cum_qty, f.leaves_qty) for f in fills] == [
            (str(sell.id), "sell", 4, 4, 0), (str(buy.id), "buy", 10, 10, 0)]
        assert fills[1].price == float(tc.get_order_by_id(buy.id).filled_avg_price)
        assert [(n.activity_type.value, n.net_amount) for n in other] == [("FEE", -1), ("FEE", -1), ("CSD", 100_000)]
        only = tc.get("/account/activities/FILL", {"direction": "asc", "page_size": 1})
        assert [a["order_id"] for a in only] == [str(buy.id)]
        nxt = tc.get("/account/activities", {"activity_types": "FILL", "direction": "asc", "page_size": 1,
                                             "page_token": only[0]["id"]})
        assert [a["order_id"] for a in nxt] == [str(sell.id)]
        with pytest.raises(APIError) as ei:
            tc.get("/account/activities/FFFFF")
        assert (ei.value.status_code, ei.value.code, ei.value.message) == (422, 40010001, "invalid activity type: FFFFF")

        h = tc.get_portfolio_history(GetPortfolioHistoryRequest(period="1W", timeframe="1Min"))
        assert isinstance(h, PortfolioHistory) and h.timeframe == "1Min" and h.base_value == 100_000
        want = [(int(t.timestamp()), round(v, 2)) for t, v in sim.engine.history]
        assert list(zip(h.timestamp, h.equity, strict=True)) == want and len(want) == N1 + 3
        assert h.profit_loss == [round(v - 100_000, 2) for v in h.equity]
        assert h.profit_loss_pct[-1] == pytest.approx((h.equity[-1] - 100_000) / 100_000, abs=1e-6)
        daily = tc.get_portfolio_history(GetPortfolioHistoryRequest(period="1W", timeframe="1D"))
        assert len(daily.timestamp) == 2 and daily.equity == [want[N1 - 1][1], want[-1][1]]
        with pytest.raises(APIError) as ei:
            tc.get_portfolio_history(GetPortfolioHistoryRequest(period="7X"))
        assert ei.value.status_code == 422 and "period" in ei.value.message
    finally:
        stop()


def test_quantities_and_prices_are_alpaca_decimals() -> None:
    """Alpaca sends decimal strings: no 0.30000000000000004, at most 9 decimals."""
    assert [num(0.1 + 0.2), num(10.0), num(1 / 3), num(-0.0), num(1e-12), num(float("inf")), num(None)] == [
        "0.3", "10", "0.333333333", "0", "0", None, None]
    sim, tc, _, stop = _start(SimConfig(slippage=0.001), stream=False)
    try:
        o = tc.submit_order(_mkt("AAA", 0.1 + 0.2, OrderSide.BUY))
        assert tc.get(f"/orders/{o.id}")["qty"] == "0.3"
        sim.step()
        raw = tc.get(f"/orders/{o.id}")
        assert all(len(raw[k].partition(".")[2]) <= 9 for k in ("filled_avg_price", "filled_qty", "qty"))
        acct = tc.get("/account")
        assert all(len(str(v).partition(".")[2]) <= 9 for v in acct.values() if isinstance(v, str))
    finally:
        stop()


def test_parity_replays_may_send_exact_prices_when_asked() -> None:
    """SimConfig(exact_prices=True) / `--exact-prices` accepts the kernel's exact levels and reports exact fills."""
    from live.sim import SimEngine, SimReject

    body = {"symbol": "AAA", "qty": 1, "side": "buy", "type": "market", "time_in_force": "day",
            "order_class": "bracket", "take_profit": {"limit_price": 104.0371}, "stop_loss": {"stop_price": 97.1234}}
    with pytest.raises(SimReject) as ei:
        SimEngine(_panel()).submit(body)
    assert ei.value.status == 422 and "sub-penny" in ei.value.body["message"]
    o = SimEngine(_panel(), SimConfig(exact_prices=True)).submit(body)
    assert [leg.limit_price or leg.stop_price for leg in o.legs] == [104.0371, 97.1234]
    with SimServer(_panel(), SimConfig(slippage=0.0007, exact_prices=True), rate_limit=1_000_000) as sim:
        tc = TradingClient(sim.api_key, sim.secret_key, url_override=sim.url)
        o = tc.submit_order(_mkt("AAA", 3, OrderSide.BUY))
        sim.step()
        want = market_fill_price_nb(sim.engine.panel.open[0, 0], 1, 0.0007)
        assert want != round(want, 9)  # a price Alpaca's 9-decimal format would move
        assert float(tc.get_order_by_id(o.id).filled_avg_price) == want
