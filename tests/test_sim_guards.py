"""Sim guards a wrong change could break unnoticed (issue 9, section 4): each test names the change it catches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data.bars import Panel
from live.sim import SimConfig, SimEngine, SimReject
from strategies.fills import market_fill_price_nb


def _panel(opens, lows, volume, symbols=("AAA", "BBB")) -> Panel:
    n = len(opens)
    idx = pd.date_range("2024-11-01 14:00", periods=n, freq="1min", tz="UTC")
    o = np.repeat(np.asarray(opens, dtype=float)[:, None], len(symbols), axis=1)
    lo = np.repeat(np.asarray(lows, dtype=float)[:, None], len(symbols), axis=1)
    v = np.repeat(np.asarray(volume, dtype=float)[:, None], len(symbols), axis=1)
    return Panel(index=idx, symbols=symbols, open=o, high=o + 0.5, low=lo, close=o, volume=v)


def _order(e: SimEngine, **kw):
    return e.submit({"symbol": "AAA", "qty": 10, "side": "buy", "type": "market", "time_in_force": "day", **kw})


def test_the_per_bar_volume_cap_is_shared_by_every_order_in_the_symbol() -> None:
    """Catches: a volume room reset per order (each order filling up to the cap on its own)."""
    e = SimEngine(_panel([10.0] * 3, [9.5] * 3, [1_000, 1_000, 1_000]), SimConfig(slippage=0.0, max_volume_share=0.1))
    first, second = _order(e, qty=80), _order(e, qty=60)
    other = _order(e, symbol="BBB", qty=100)  # another symbol has its own room
    e.step()  # 10% of 1,000 = 100 shares of AAA may trade in this bar, for both orders together
    assert (first.filled_qty, second.filled_qty, other.filled_qty) == (80, 20, 100)
    assert (first.status, second.status) == ("filled", "partially_filled")
    e.step()
    assert (second.filled_qty, second.status) == (60, "filled")


@pytest.mark.parametrize("account", ["cash", "margin"])
def test_shares_promised_to_open_sells_cannot_be_sold_again(account: str) -> None:
    """Catches: available qty counted from the position alone (ignoring open sells), on either account type."""
    e = SimEngine(_panel([10.0] * 3, [9.5] * 3, [1e6] * 3), SimConfig(slippage=0.0, account=account))
    _order(e, qty=10)
    e.step()
    resting = _order(e, side="sell", type="limit", limit_price=12.0, qty=6, time_in_force="gtc")
    with pytest.raises(SimReject) as ei:
        _order(e, side="sell", qty=5)
    assert ei.value.status == 403
    assert ei.value.body["message"] == "insufficient qty available for order (requested: 5, available: 4)"
    assert _order(e, side="sell", qty=4).status == "new"  # what is left can be sold
    e.cancel(resting.id)  # canceling frees the promised shares (the market sell of 4 is still open)
    assert e.available_qty("AAA") == 6


def test_a_replace_does_not_count_its_own_reservation() -> None:
    """Catches: a PATCH checked against buying power (or shares) that still hold the order it replaces."""
    e = SimEngine(_panel([99.0] * 3, [98.5] * 3, [1e6] * 3), SimConfig(initial_cash=10_000.0, account="cash"))
    buy = _order(e, type="limit", limit_price=90.0, qty=100, time_in_force="gtc")  # holds 9,000 of 10,000
    assert e.buying_power() == pytest.approx(1_000.0)
    new = e.replace(buy.id, {"limit_price": 99.5})  # 9,950: fits only once its own 9,000 is released
    assert (buy.status, new.status, new.limit_price) == ("replaced", "new", 99.5)
    assert e.buying_power() == pytest.approx(50.0)
    with pytest.raises(SimReject) as ei:
        e.replace(new.id, {"limit_price": 100.5})  # 10,050 > 10,000: still refused
    assert (ei.value.status, ei.value.body["message"]) == (403, "insufficient buying power")
    e.cancel(new.id)
    _order(e, qty=10)
    e.step()
    sell = _order(e, side="sell", type="limit", limit_price=120.0, qty=10, time_in_force="gtc")
    assert e.replace(sell.id, {"limit_price": 121.0, "qty": 10}).qty == 10  # all 10 shares, its own included


def test_the_rest_of_a_triggered_stop_fills_as_a_market_order() -> None:
    """Catches: a triggered stop's remainder waiting for the price to cross its stop again."""
    slip = 0.001
    opens, lows = [100.0, 99.0, 99.5, 99.8, 99.9], [99.5, 97.0, 99.2, 99.5, 99.5]
    e = SimEngine(_panel(opens, lows, [1e6, 100, 100, 100, 100]), SimConfig(slippage=slip, max_volume_share=0.1))
    _order(e, qty=30)
    e.step()  # bought 30 at bar 0 (volume 1e6)
    stop = _order(e, side="sell", type="stop", stop_price=98.0, qty=30, time_in_force="gtc")
    e.step()  # bar 1 trades down through 98: 10 shares (10% of 100) at the stop price
    assert (stop.filled_qty, stop.filled_avg_price, stop.status) == (10, 98.0, "partially_filled")
    e.step()  # bar 2 stays above 98: the rest is a market order now, filled at the open (+ slippage)
    e.step()
    assert (stop.filled_qty, stop.status) == (30, "filled")
    want = (10 * 98.0 + 10 * market_fill_price_nb(99.5, -1, slip) + 10 * market_fill_price_nb(99.8, -1, slip)) / 30
    assert stop.filled_avg_price == pytest.approx(want, rel=1e-12)
    assert "AAA" not in e.holdings


def test_exit_legs_can_be_replaced_but_not_enlarged() -> None:
    """A bracket's held stop-loss and an OCO's stop leg move their stop (Alpaca allows it) without overselling."""
    e = SimEngine(_panel([100.0] * 4, [99.5] * 4, [1e6] * 4), SimConfig(slippage=0.0))
    br = _order(e, order_class="bracket", take_profit={"limit_price": 110.0}, stop_loss={"stop_price": 90.0})
    e.step()
    tp, sl = br.legs
    assert (tp.status, sl.status) == ("new", "held")
    moved = e.replace(sl.id, {"stop_price": 95.0})
    assert (moved.status, moved.stop_price, moved.armed, sl.status) == ("held", 95.0, True, "replaced")
    assert tp.siblings == [moved] and moved.siblings == [tp]
    with pytest.raises(SimReject) as ei:
        e.replace(moved.id, {"qty": 11})
    assert ei.value.status == 403 and "insufficient qty" in ei.value.body["message"]
    e.cancel(tp.id)  # the take-profit with its OCO partner, the moved stop
    assert moved.status == "canceled"
    oco = _order(e, side="sell", type="limit", order_class="oco", time_in_force="gtc", take_profit={"limit_price": 120.0},
                 stop_loss={"stop_price": 80.0})
    stop_leg = oco.legs[0]
    assert e.replace(stop_leg.id, {"stop_price": 85.0}).stop_price == 85.0
    e.step()  # neither level is reached: the pair keeps resting
    assert oco.status == "new" and e.holdings["AAA"].qty == 10


def _two_sessions() -> Panel:
    idx = pd.DatetimeIndex([*pd.date_range("2024-11-01 19:58", periods=2, freq="1min", tz="UTC"),
                            *pd.date_range("2024-11-04 14:30", periods=3, freq="1min", tz="UTC")])
    o = np.full((len(idx), 2), 10.0)
    return Panel(index=idx, symbols=("AAA", "BBB"), open=o, high=o + 0.5, low=o - 0.5, close=o,
                 volume=np.full(o.shape, 1e6))


def test_orders_queued_while_closed_count_against_shorts_and_wash_trades() -> None:
    """Catches: the short-sale and wash-trade checks looking only at routed orders, so a buy queued while the
    market is closed let an opposite sell through that the same check refuses in session (Alpaca counts
    `accepted` orders as open): at the open both filled and the account went short through a self-cross."""
    e = SimEngine(_two_sessions(), SimConfig(slippage=0.0))
    _order(e, symbol="BBB", qty=5)
    while e.is_open:
        e.step()
    assert e.holdings["BBB"].qty == 5
    buy = _order(e, qty=5)
    assert buy.status == "accepted"
    with pytest.raises(SimReject) as ei:
        _order(e, side="sell", qty=10)  # would open a short while the long buy waits for the open
    assert (ei.value.status, ei.value.body["message"]) == (403, "cannot open a short sell while a long buy order is open")
    sell = _order(e, symbol="BBB", side="sell", type="limit", limit_price=10.0, qty=5)  # closing BBB, queued
    with pytest.raises(SimReject) as ei:
        _order(e, symbol="BBB", type="limit", limit_price=10.5, qty=5)  # a buy crossing our own queued sell
    assert ei.value.status == 422 and "wash trade" in ei.value.body["message"]
    e.step()
    e.step()
    assert (buy.status, sell.status) == ("filled", "filled")
    assert (e.holdings["AAA"].qty, "BBB" in e.holdings) == (5, False)  # nothing crossed, nothing went short


def test_a_buy_that_opens_a_long_is_refused_while_a_short_sale_is_open() -> None:
    """Catches: only the sell side of Alpaca's rule ("cannot open a short sell while a long buy order is open").
    Its mirror, "cannot open a long buy while a short sell order is open" (403), was missing: flat, a resting short
    sale and a buy stop were both taken, and one bar through both levels flipped the account from short to long."""
    e = SimEngine(_panel([10.0, 10.0, 10.0], [9.5] * 3, [1e6] * 3), SimConfig(slippage=0.0))
    short = _order(e, side="sell", type="limit", limit_price=10.3, qty=1, time_in_force="gtc")
    with pytest.raises(SimReject) as ei:
        _order(e, type="stop", stop_price=10.4, qty=10, time_in_force="gtc")
    assert (ei.value.status, ei.value.body["message"]) == (403, "cannot open a long buy while a short sell order is open")
    assert ei.value.body["existing_order_id"] == short.id
    e.step()  # the bar's high (10.5) trades through both levels
    assert short.status == "filled" and e.holdings["AAA"].qty == -1  # short, never flipped long in one bar
    assert _order(e, qty=1).status == "new"  # covering the short is a closing buy, allowed


@pytest.mark.parametrize("body", [{}, {"limit_price": 90.0}, {"limit_price": 90.0, "qty": 100, "time_in_force": "gtc"}])
def test_a_replace_that_changes_nothing_is_alpacas_403_and_keeps_the_order(body: dict) -> None:
    """Catches: a PATCH without changes creating a no-op replacement (Alpaca: 403 "order parameters are not
    changed"; the order stays as it is)."""
    e = SimEngine(_panel([99.0] * 3, [98.5] * 3, [1e6] * 3), SimConfig(initial_cash=100_000.0))
    buy = _order(e, type="limit", limit_price=90.0, qty=100, time_in_force="gtc")
    n = len(e.orders)
    with pytest.raises(SimReject) as ei:
        e.replace(buy.id, body)
    assert (ei.value.status, ei.value.body["message"]) == (403, "order parameters are not changed")
    assert (len(e.orders), buy.status) == (n, "new")
    assert e.replace(buy.id, {**body, "limit_price": 91.0}).limit_price == 91.0  # a real change still goes
