"""The sim's fill model, replay clock, rate limit and loopback rule (alpaca-py REST where it matters)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import requests
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderClass, OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest, StopLossRequest, TakeProfitRequest

from data.bars import Panel
from data.sample import generate_panel
from live.sim import ManualClock, SimConfig, SimEngine, SimServer
from strategies.fills import (
    bracket_exit_long_nb,
    limit_fill_price_nb,
    market_fill_price_nb,
    stop_fill_price_nb,
)
from tierlab.errors import ConfigError


def _panel(opens, highs, lows, closes, volume=1e6, start="2024-11-01 13:30", symbols=("AAA",)) -> Panel:
    idx = pd.date_range(start, periods=len(opens), freq="1min", tz="UTC")
    col = lambda x: np.asarray(x, dtype=float).reshape(len(idx), -1)  # noqa: E731
    vol = np.broadcast_to(np.asarray(volume, dtype=float).reshape(-1, 1), (len(idx), len(symbols)))
    return Panel(index=idx, symbols=symbols, open=col(opens), high=col(highs), low=col(lows), close=col(closes),
                 volume=vol)


def _submit(e: SimEngine, **kw):
    body = {"symbol": "AAA", "qty": 10, "side": "buy", "type": "market", "time_in_force": "day", **kw}
    return e.submit(body)


@pytest.fixture(scope="module")
def session() -> Panel:
    """One real-looking session of the bundled synthetic sample (12 symbols, 390 bars)."""
    return generate_panel("2024-11-01", "2024-11-01")


def test_market_order_after_bar_t_fills_at_t_plus_1_open_plus_slippage(session: Panel) -> None:
    """Acceptance 2, through alpaca-py and the sim's step mode, for buys and sells at several bars."""
    slip = 0.0007
    with SimServer(session, SimConfig(slippage=slip, initial_cash=1e7)) as sim:
        tc = TradingClient(sim.api_key, sim.secret_key, url_override=sim.url)
        checked = 0
        for t in (0, 17, 120, 301):
            while sim.engine.k <= t:  # close bars up to and including t: the decision bar
                sim.step()
            orders = {}
            for sym in ("NVDA", "MSFT", "AAPL") if t == 0 else ("NVDA", "MSFT"):
                orders[sym] = tc.submit_order(MarketOrderRequest(symbol=sym, qty=3, side=OrderSide.BUY,
                                                                 time_in_force=TimeInForce.DAY))
            if t == 17:  # sell what the first round bought (a sell pays the slippage the other way)
                orders["AAPL-sell"] = tc.submit_order(MarketOrderRequest(symbol="AAPL", qty=3, side=OrderSide.SELL,
                                                                         time_in_force=TimeInForce.DAY))
            nxt = {k: t + 1 + int(np.flatnonzero(~np.isnan(session.open[t + 1:, session.symbols.index(k[:4])]))[0])
                   for k in orders}
            while sim.engine.k <= max(nxt.values()):
                sim.step()
            for key, o in orders.items():
                j = session.symbols.index(key[:4])
                got = tc.get_order_by_id(o.id)
                want = market_fill_price_nb(session.open[nxt[key], j], -1 if "sell" in key else 1, slip)
                assert got.status.value == "filled"
                assert sim.call(lambda oid=str(o.id): sim.engine.orders[oid].filled_avg_price) == want  # exact
                assert float(got.filled_avg_price) == round(want, 9)  # on the wire: Alpaca's decimal, <= 9 places
                assert pd.Timestamp(got.filled_at) == session.index[nxt[key]]
                checked += 1
        assert checked == 10


def test_order_waits_for_the_next_bar_that_exists() -> None:
    nan = np.nan
    e = SimEngine(_panel([10, nan, nan, 11], [10, nan, nan, 11], [10, nan, nan, 11], [10, nan, nan, 11]),
                  SimConfig(slippage=0.01))
    e.step()
    o = _submit(e, qty=1)
    e.step(), e.step()
    assert o.status == "new"  # minutes without a bar never fill (nothing forward-filled)
    e.step()
    assert o.status == "filled" and o.filled_avg_price == market_fill_price_nb(11.0, 1, 0.01)


def test_partial_fills_cap_each_bar_at_the_volume_share_and_fees_apply() -> None:
    e = SimEngine(_panel([10, 10, 10, 10], [10] * 4, [10] * 4, [10] * 4, volume=[1000, 250, 1000, 1000]),
                  SimConfig(slippage=0.0, max_volume_share=0.1, fee_per_share=0.01, fee_per_order=1.0))
    o = _submit(e, qty=180)
    e.step()
    assert (o.status, o.filled_qty) == ("partially_filled", 100)
    e.step()
    assert (o.status, o.filled_qty) == ("partially_filled", 125)  # floor(0.1 * 250)
    e.step()
    assert (o.status, o.filled_qty) == ("filled", 180)
    events = [u["event"] for u in e.drain()[0]]
    assert events == ["pending_new", "new", "partial_fill", "partial_fill", "fill"]
    assert e.cash == pytest.approx(100_000 - 180 * 10 - 180 * 0.01 - 1.0)  # the per-order fee once


def test_ioc_cancels_the_unfilled_rest() -> None:
    e = SimEngine(_panel([10, 10], [10, 10], [10, 10], [10, 10], volume=100), SimConfig(slippage=0.0))
    o = _submit(e, qty=50, time_in_force="ioc")
    e.step()
    assert (o.status, o.filled_qty) == ("canceled", 10)


def test_resting_orders_use_the_shared_fill_functions() -> None:
    opens, highs, lows = [100, 100, 99, 101], [100.5, 101, 99.5, 103], [99.5, 98, 96, 100.5]
    e = SimEngine(_panel(opens, highs, lows, [100, 99, 97, 102]), SimConfig(slippage=0.001))
    lim = _submit(e, type="limit", limit_price=98.5, qty=5)
    e.step()  # bar 0 low 99.5: not reached
    assert lim.status == "new"
    e.step()  # bar 1 trades down to 98
    assert lim.filled_avg_price == limit_fill_price_nb(1, 98.5, 100, 101, 98)
    stop = _submit(e, side="sell", type="stop", stop_price=97.0, qty=5)
    e.step()  # bar 2: low 96 crosses 97
    assert stop.filled_avg_price == stop_fill_price_nb(-1, 97.0, 99, 99.5, 96)


def test_bracket_touching_both_levels_exits_at_the_stop_like_the_backtest() -> None:
    opens, highs, lows = [100, 100, 100], [100.2, 100.2, 104], [99.8, 99.8, 95]
    e = SimEngine(_panel(opens, highs, lows, [100, 100, 100]), SimConfig(slippage=0.0))
    br = _submit(e, qty=5, order_class="bracket", take_profit={"limit_price": 103},
                 stop_loss={"stop_price": 97})
    tp, sl = br.legs
    e.step()  # entry fills at bar 0's open; legs go live from bar 1 (Alpaca shows the stop-loss leg "held")
    assert br.status == "filled" and (tp.status, sl.status) == ("new", "held")
    e.step()
    assert sl.status == "held"
    e.step()  # bar 2 reaches both 103 and 97
    code, price = bracket_exit_long_nb(100, 104, 95, 97, 103)
    assert (sl.status, tp.status) == ("filled", "canceled") and sl.filled_avg_price == price and code == 1
    assert "AAA" not in e.holdings


def test_day_orders_expire_at_the_close() -> None:
    e = SimEngine(_panel([10, 10], [10, 10], [10, 10], [10, 10]))
    day = _submit(e, type="limit", limit_price=5)
    gtc = _submit(e, type="limit", limit_price=5, time_in_force="gtc")
    e.step(), e.step()
    assert not e.is_open and (day.status, gtc.status) == ("expired", "new")
    queued = _submit(e)  # Alpaca accepts an order while closed and queues it for the next open
    assert queued.status == "accepted"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.7", "::", "example.com"])
def test_sim_refuses_to_bind_off_loopback(host: str) -> None:
    with pytest.raises(ConfigError, match="loopback only"):
        SimServer(_panel([10], [10], [10], [10]), host=host)


def test_cli_refuses_a_public_host() -> None:
    r = subprocess.run([sys.executable, "-m", "live.sim", "--host", "0.0.0.0", "--replay", "2024-11-01"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "loopback only" in r.stderr and "0.0.0.0" in r.stderr


def test_rate_limit_200_per_minute_then_429_with_headers() -> None:
    clock = ManualClock()
    with SimServer(_panel([10], [10], [10], [10]), clock=clock) as sim:
        s = requests.Session()
        s.headers.update({"APCA-API-KEY-ID": sim.api_key, "APCA-API-SECRET-KEY": sim.secret_key})
        codes = [s.get(f"{sim.url}/v2/clock").status_code for _ in range(250)]
        assert codes.count(200) == 200 and codes[200:] == [429] * 50
        r = s.get(f"{sim.url}/v2/account")
        assert r.status_code == 429 and r.json()["code"] == 42910000
        assert r.headers["X-Ratelimit-Limit"] == "200" and r.headers["X-Ratelimit-Remaining"] == "0"
        assert int(r.headers["X-Ratelimit-Reset"]) == int(clock() + 60)
        clock.advance(60)
        r = s.get(f"{sim.url}/v2/account")
        assert r.status_code == 200 and r.headers["X-Ratelimit-Remaining"] == "199"
        assert s.get(f"{sim.url}/v2/account", headers={"APCA-API-SECRET-KEY": ""}).status_code == 401


def test_bracket_via_alpaca_py_rejects_inverted_levels() -> None:
    with SimServer(_panel([10, 10], [10, 10], [10, 10], [10, 10])) as sim:
        tc = TradingClient(sim.api_key, sim.secret_key, url_override=sim.url)
        from alpaca.common.exceptions import APIError

        with pytest.raises(APIError) as ei:
            tc.submit_order(MarketOrderRequest(symbol="AAA", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                                               order_class=OrderClass.BRACKET,
                                               take_profit=TakeProfitRequest(limit_price=9),
                                               stop_loss=StopLossRequest(stop_price=11)))
        assert ei.value.status_code == 422


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="max_volume_share"):
        SimConfig(max_volume_share=0.0)
