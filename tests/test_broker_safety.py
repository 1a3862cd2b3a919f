"""AlpacaBroker when things go wrong: silent servers, 5xx after accepting, restarts, oversells, ticks, statuses.

Two kinds of counterpart: live.sim (the Alpaca-compatible sim) and tiny stub HTTP servers on loopback
that answer exactly what a test needs (silence, a 500 after recording the order, any status).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import pytest

from data.bars import Panel
from live.broker import (
    TERMINAL,
    UNKNOWN,
    WAITING,
    WORKING,
    AlpacaBroker,
    OutcomeUnknown,
    OversellRefused,
    is_open_status,
    order_phase,
    round_price,
    valid_prices,
)
from live.sim import ManualClock, SimConfig, SimServer
from strategies.intents import OrderIntent
from tierlab.errors import BrokerError

ROOT = Path(__file__).resolve().parents[1]
T0 = pd.Timestamp("2024-11-01 14:00", tz="UTC")
KEY, SECRET = "stub-key", "stub-secret-value"


# ------------------------------------------------------------------ stub Alpaca
def order_json(cid: str, *, symbol: str = "AAA", side: str = "buy", qty: float = 1, status: str = "accepted",
               type_: str = "market", limit: float | None = None, stop: float | None = None,
               order_class: str = "simple", legs: list[dict[str, Any]] | None = None,
               submitted_at: str = "2024-11-01T14:00:00.000000Z", filled_qty: float = 0,
               filled_at: str | None = None, price: float | None = None) -> dict[str, Any]:
    """An order as Alpaca's REST API sends it."""
    return {
        "id": str(uuid.uuid4()), "client_order_id": cid, "created_at": submitted_at, "updated_at": submitted_at,
        "submitted_at": submitted_at, "filled_at": filled_at, "expired_at": None, "canceled_at": None,
        "failed_at": None, "replaced_at": None, "replaced_by": None, "replaces": None,
        "asset_id": "b0b6dd9d-8b9b-48a9-ba46-b9d54906e415", "symbol": symbol, "asset_class": "us_equity",
        "notional": None, "qty": str(qty), "filled_qty": str(filled_qty),
        "filled_avg_price": None if price is None else str(price), "order_class": order_class,
        "order_type": type_, "type": type_, "side": side, "time_in_force": "day",
        "limit_price": None if limit is None else str(limit), "stop_price": None if stop is None else str(stop),
        "status": status, "extended_hours": False, "legs": legs, "trail_percent": None, "trail_price": None,
        "hwm": None,
    }


def account_json(equity: float = 10_000.0, buying_power: float = 40_000.0) -> dict[str, Any]:
    """A margin account as GET /v2/account sends it (buying power 4x equity)."""
    n = str
    return {"id": "5c1f4b0e-0000-4000-8000-000000000009", "account_number": "PA-STUB", "status": "ACTIVE",
            "crypto_status": "INACTIVE", "currency": "USD", "buying_power": n(buying_power),
            "regt_buying_power": n(buying_power / 2), "non_marginable_buying_power": n(equity),
            "cash": n(equity), "accrued_fees": "0", "portfolio_value": n(equity), "equity": n(equity),
            "last_equity": n(equity), "long_market_value": "0", "short_market_value": "0", "initial_margin": "0",
            "maintenance_margin": "0", "last_maintenance_margin": "0", "sma": "0", "multiplier": "4",
            "shorting_enabled": True, "trading_blocked": False, "transfers_blocked": False,
            "account_blocked": False, "trade_suspended_by_user": False, "pattern_day_trader": False,
            "daytrade_count": 0, "created_at": "2024-01-01T00:00:00Z"}


SILENT = object()  # a route answer: say nothing until the client gives up


class Stub:
    """A loopback HTTP server whose routes are plain functions of (method, path, query, body)."""

    def __init__(self, routes: Callable[[str, str, dict[str, str], Any], Any]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                u = urlsplit(self.path)
                q = {k: v[-1] for k, v in parse_qs(u.query).items()}
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                stub.requests.append((self.command, u.path, q, body))
                answer = stub.routes(self.command, u.path, q, body)
                if answer is SILENT:
                    stub.release.wait(5.0)  # then hang up without a word
                    self.close_connection = True
                    return
                status, payload = answer
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def calls(self, method: str | None = None, path: str | None = None) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _, _ in self.requests if (method in (None, m)) and (path in (None, p))]


@pytest.fixture(params=["loopback", "requests"])
def stub_factory(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Stub]]:
    """Stub servers on 127.0.0.1; every stub test runs twice: through the loopback transport the sim gets
    and through the requests session (with its timeouts) that a remote Alpaca gets."""
    if request.param == "requests":
        import live.broker

        monkeypatch.setattr(live.broker, "_is_loopback_url", lambda url: False)
    made: list[Stub] = []

    def make(routes: Callable[[str, str, dict[str, str], Any], Any]) -> Stub:
        made.append(Stub(routes))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _stub_broker(stub: Stub, **kw: Any) -> AlpacaBroker:
    kw = {"connect_timeout_s": 1.0, "read_timeout_s": 0.3, "max_attempts": 3, "sleep": lambda s: None, **kw}
    return AlpacaBroker(KEY, SECRET, url=stub.url, **kw)


def _intent(i: int = 1, **kw: Any) -> OrderIntent:
    fields = {"strategy": "tiered", "symbol": "AAA", "side": "buy", "qty": 1, **kw}
    return OrderIntent(bar_time=T0 + pd.Timedelta(minutes=i), **fields)


NOT_FOUND = (404, {"code": 40410000, "message": "order not found"})


def _book_routes(book: dict[str, dict[str, Any]], post: Callable[[dict[str, Any]], Any]) -> Callable[..., Any]:
    """Routes over `book` (cid -> order json): POST /v2/orders calls `post`, the lookup reads the book."""
    def routes(method: str, path: str, q: dict[str, str], body: Any) -> Any:
        if method == "POST" and path == "/v2/orders":
            return post(body)
        if method == "GET" and path == "/v2/orders:by_client_order_id":
            o = book.get(q.get("client_order_id", ""))
            return (200, o) if o else NOT_FOUND
        return (404, {"code": 40410000, "message": f"no route {path}"})
    return routes


# ------------------------------------------------------------------ lost answers
def test_silent_server_times_out_and_the_order_is_looked_up_not_resent(stub_factory) -> None:
    book: dict[str, dict[str, Any]] = {}

    def post(body: dict[str, Any]) -> Any:
        book[body["client_order_id"]] = order_json(body["client_order_id"], qty=body["qty"])
        return SILENT  # accepted, then the answer never comes

    stub = stub_factory(_book_routes(book, post))
    t = time.monotonic()
    order = _stub_broker(stub).submit(_intent(1))
    assert time.monotonic() - t < 3.0  # the read timeout (0.3 s) ended the wait, not the server
    assert order.client_order_id == _intent(1).client_order_id
    # the lookup came right after the lost answer, and nothing was sent twice
    assert stub.calls() == [("POST", "/v2/orders"), ("GET", "/v2/orders:by_client_order_id")]


def test_account_on_a_silent_server_times_out_as_a_retryable_error(stub_factory) -> None:
    stub = stub_factory(lambda *a: SILENT)
    t = time.monotonic()
    with pytest.raises(BrokerError) as ei:
        _stub_broker(stub, max_attempts=2).account()
    assert time.monotonic() - t < 3.0  # 2 x 0.3 s, not the server's 5 s silence (or forever)
    assert ei.value.retryable and "ReadTimeout" in str(ei.value)
    assert len(stub.calls("GET", "/v2/account")) == 2
    assert SECRET not in str(ei.value) and KEY not in str(ei.value)


def test_5xx_after_accept_gives_exactly_one_order(stub_factory) -> None:
    book: dict[str, dict[str, Any]] = {}

    def post(body: dict[str, Any]) -> Any:
        book[body["client_order_id"]] = order_json(body["client_order_id"], status="pending_new")
        return 500, {"code": 50010000, "message": "internal server error"}

    stub = stub_factory(_book_routes(book, post))
    order = _stub_broker(stub).submit(_intent(2))
    assert order.status.value == "pending_new" and len(book) == 1
    assert stub.calls() == [("POST", "/v2/orders"), ("GET", "/v2/orders:by_client_order_id")]


def test_5xx_before_accept_is_sent_again_with_the_same_id(stub_factory) -> None:
    book: dict[str, dict[str, Any]] = {}
    posts: list[str] = []

    def post(body: dict[str, Any]) -> Any:
        posts.append(body["client_order_id"])
        if len(posts) == 1:
            return 503, {"code": 50300000, "message": "service unavailable"}  # refused before accepting
        book[body["client_order_id"]] = o = order_json(body["client_order_id"])
        return 200, o

    stub = stub_factory(_book_routes(book, post))
    order = _stub_broker(stub).submit(_intent(3))
    assert stub.calls() == [("POST", "/v2/orders"), ("GET", "/v2/orders:by_client_order_id"), ("POST", "/v2/orders")]
    assert posts == [_intent(3).client_order_id] * 2 and order.client_order_id == posts[0]


def test_failed_lookup_after_a_lost_answer_is_outcome_unknown(stub_factory) -> None:
    def routes(method: str, path: str, q: dict[str, str], body: Any) -> Any:
        if method == "POST":
            return 502, {"code": 50200000, "message": "bad gateway"}
        return 503, {"code": 50300000, "message": "lookup down"}

    stub = stub_factory(routes)
    with pytest.raises(OutcomeUnknown) as ei:
        _stub_broker(stub).submit(_intent(4))
    e = ei.value
    assert e.retryable and e.client_order_id == _intent(4).client_order_id and "never a new decision" in str(e)
    assert len(stub.calls("POST")) == 1  # never sent again while the first outcome is unknown


def test_refused_connection_is_retried_then_a_retryable_broker_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    waits: list[float] = []
    broker = AlpacaBroker(KEY, SECRET, url=f"http://127.0.0.1:{port}", max_attempts=4, sleep=waits.append)
    with pytest.raises(BrokerError) as ei:
        broker.account()
    assert ei.value.retryable and "ConnectionError" in str(ei.value)
    assert len(waits) == 3  # 4 attempts, a backoff between each
    waits.clear()
    with pytest.raises(BrokerError) as ei:
        broker.submit(_intent(5))
    assert ei.value.retryable and not isinstance(ei.value, OutcomeUnknown)  # provably never sent
    assert len(waits) == 3


def test_env_proxy_carries_a_remote_broker_but_never_a_sim_on_loopback(monkeypatch) -> None:
    """A proxy in the environment is for Alpaca; a loopback sim is reached directly (and cheaply)."""
    stubs = [Stub(lambda *a: (200, account_json(equity=10_000.0))), Stub(lambda *a: (200, account_json(equity=5_000.0)))]
    try:
        _proxy_case(monkeypatch, *stubs)
    finally:
        for s in stubs:
            s.close()


def _proxy_case(monkeypatch: pytest.MonkeyPatch, proxy: Stub, sim: Stub) -> None:
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, proxy.url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    remote = AlpacaBroker(KEY, SECRET, url="http://broker.example.invalid", max_attempts=1)
    assert remote.equity() == 10_000.0 and proxy.calls() == [("GET", "/v2/account")]  # through the proxy
    assert _stub_broker(sim).equity() == 5_000.0
    assert len(proxy.calls()) == 1 and sim.calls() == [("GET", "/v2/account")]


# ------------------------------------------------------------------ statuses
EXPECTED_PHASE = {
    "new": WORKING, "partially_filled": WORKING, "accepted": WORKING, "pending_new": WORKING,
    "accepted_for_bidding": WORKING, "stopped": WORKING, "pending_cancel": WORKING, "pending_replace": WORKING,
    "held": WAITING, "suspended": WAITING, "done_for_day": WAITING, "calculated": WAITING,
    "pending_review": WAITING,
    "filled": TERMINAL, "canceled": TERMINAL, "expired": TERMINAL, "replaced": TERMINAL, "rejected": TERMINAL,
}


@pytest.mark.parametrize("status", sorted(EXPECTED_PHASE))
def test_every_alpaca_status_is_understood(stub_factory, status: str) -> None:
    cid = _intent(6).client_order_id
    listed = order_json("tl-listed", symbol="BBB", side="sell", type_="limit", limit=12.0, status=status)

    def routes(method: str, path: str, q: dict[str, str], body: Any) -> Any:
        if method == "POST" and path == "/v2/orders":
            return 200, order_json(body["client_order_id"], status=status)
        if path == "/v2/orders":
            return 200, [listed] if q.get("status") == "open" else []
        if path == "/v2/positions":
            return 200, []
        if path == "/v2/account":
            return 200, account_json()
        return NOT_FOUND

    stub = stub_factory(routes)
    broker = _stub_broker(stub)
    assert order_phase(status) == EXPECTED_PHASE[status]
    order = broker.submit(_intent(6))
    assert order.client_order_id == cid and order_phase(order.status) == EXPECTED_PHASE[status]
    rec = broker.reconcile()
    # a non-terminal order is kept as open (never re-sent, never assumed gone); a terminal one is not
    assert ("tl-listed" in rec.open_orders) == (EXPECTED_PHASE[status] != TERMINAL)
    assert (rec.take_profits.get("BBB") == 12.0) == (EXPECTED_PHASE[status] != TERMINAL)


def test_an_order_in_a_status_alpaca_py_does_not_know_is_kept_as_open(stub_factory) -> None:
    book: dict[str, dict[str, Any]] = {}
    leg = order_json("leg-1", side="sell", type_="stop", stop=9.5, status="brand_new_status", order_class="bracket")

    def routes(method: str, path: str, q: dict[str, str], body: Any) -> Any:
        if method == "POST" and path == "/v2/orders":
            book[body["client_order_id"]] = o = order_json(body["client_order_id"], status="brand_new_status")
            return 200, o
        if path == "/v2/orders:by_client_order_id":
            o = book.get(q["client_order_id"])
            return (200, o) if o else NOT_FOUND
        if path == "/v2/orders":
            parent = order_json("tl-parent", status="brand_new_status", order_class="bracket", legs=[leg])
            return 200, [parent] if q.get("status") == "open" else []
        if path == "/v2/positions":
            return 200, []
        if path == "/v2/account":
            return 200, account_json()
        return NOT_FOUND

    stub = stub_factory(routes)
    broker = _stub_broker(stub)
    order = broker.submit(_intent(12))  # the answer cannot be read by alpaca-py: it is placed all the same
    assert order.client_order_id == _intent(12).client_order_id and order.status == "brand_new_status"
    assert order_phase(order.status) == UNKNOWN and is_open_status(order.status)
    assert len(stub.calls("POST")) == 1
    rec = broker.reconcile()
    assert "tl-parent" in rec.open_orders and rec.stops == {"AAA": 9.5}
    assert rec.open_orders["tl-parent"].legs[0].status == "brand_new_status"


def test_a_status_nobody_knows_counts_as_open() -> None:
    assert order_phase("brand_new_status") == UNKNOWN
    assert order_phase(None) == UNKNOWN
    assert is_open_status("brand_new_status") and not is_open_status("filled")
    from alpaca.trading.enums import OrderStatus

    assert {s.value for s in OrderStatus} == set(EXPECTED_PHASE)  # the table covers every alpaca-py status


# ------------------------------------------------------------------ prices
def test_prices_go_on_valid_ticks() -> None:
    assert round_price(11.004, "up") == 11.01 and round_price(11.004, "down") == 11.0
    assert round_price(10.005, "nearest") == 10.01 and round_price(9.999, "down") == 9.99
    assert round_price(0.123456, "down") == 0.1234 and round_price(0.123456, "up") == 0.1235
    assert round_price(0.99996, "up") == 1.0 and round_price(1.004999, "down") == 1.0
    with pytest.raises(BrokerError, match="price must be > 0"):
        round_price(0.0)


def test_a_price_with_no_valid_tick_is_a_clear_broker_error() -> None:
    """Catches: 0.00004 rounded down to 0.0 (an order Alpaca refuses, sent anyway) and inf escaping as
    decimal.InvalidOperation instead of a BrokerError naming the price."""
    for price, how in ((0.00004, "down"), (0.00004, "nearest"), (float("inf"), "up"), (float("-inf"), "down")):
        with pytest.raises(BrokerError, match="price") as ei:
            round_price(price, how)
        assert not ei.value.retryable
    assert round_price(0.00005, "nearest") == 0.0001 and round_price(1e-300, "up") == 0.0001


def test_bracket_prices_round_away_from_the_market_and_keep_a_cent_from_the_base() -> None:
    i = _intent(7, take_profit=10.3049, stop_loss=9.8551)
    v = valid_prices(i, base_price=10.0)
    assert (v.take_profit, v.stop_loss) == (10.31, 9.85)  # never a tighter stop or a lower target
    tight = valid_prices(_intent(7, take_profit=10.004, stop_loss=9.999), base_price=10.0)
    assert (tight.take_profit, tight.stop_loss) == (10.01, 9.99)  # at least $0.01 from the base
    penny = valid_prices(_intent(7, take_profit=0.51237, stop_loss=0.48771), base_price=0.5)
    assert (penny.take_profit, penny.stop_loss) == (0.5124, 0.4877)
    lim = valid_prices(_intent(7, type="limit", limit_price=25.1289))
    assert lim.limit_price == 25.12  # a buy never pays more than decided
    sell = valid_prices(_intent(7, side="sell", type="limit", limit_price=25.1211))
    assert sell.limit_price == 25.13
    assert v.client_order_id == i.client_order_id  # same decision, same id


# ------------------------------------------------------------------ against the sim
def _panel() -> Panel:
    idx = pd.date_range("2024-11-01 13:30", periods=30, freq="1min", tz="UTC")
    one = np.full((len(idx), 2), 10.0)
    return Panel(index=idx, symbols=("AAA", "BBB"), open=one, high=one + 0.1, low=one - 0.1, close=one,
                 volume=np.full((len(idx), 2), 1e7))


@pytest.fixture
def sim_and_clock():
    clock = ManualClock()
    with SimServer(_panel(), SimConfig(initial_cash=1e5), clock=clock) as sim:
        yield sim, clock


def _sim_broker(sim: SimServer, clock: ManualClock, **kw: Any) -> AlpacaBroker:
    return AlpacaBroker(sim.api_key, sim.secret_key, url=sim.url, sleep=clock.advance, now=clock, **kw)


def test_restart_finds_working_bracket_legs(sim_and_clock) -> None:
    sim, clock = sim_and_clock
    first = _sim_broker(sim, clock)
    entry = first.submit(_intent(8, qty=5, take_profit=11.004, stop_loss=9.2049), base_price=10.0)
    assert entry.order_class.value == "bracket"
    sim.step()  # the entry fills; its take-profit and stop now work
    waiting = first.submit(OrderIntent(strategy="tiered", symbol="BBB", side="buy", qty=3, bar_time=T0,
                                       type="limit", limit_price=5.0, take_profit=6.0, stop_loss=4.5))
    restarted = _sim_broker(sim, clock)  # a new process with nothing in memory
    rec = restarted.reconcile()
    assert rec.positions == {"AAA": 5.0}
    assert rec.stops["AAA"] == 9.2 and rec.take_profits["AAA"] == 11.01  # the ticks the broker holds
    aaa_legs = [o for o in rec.legs.values() if o.symbol == "AAA"]
    assert sorted(str(o.type.value) for o in aaa_legs) == ["limit", "stop"]
    assert all(float(o.qty) == 5 for o in aaa_legs)
    # the unfilled bracket is an open parent with its two legs nested (held)
    parent = rec.open_orders[waiting.client_order_id]
    assert len(parent.legs) == 2 and {x.status.value for x in parent.legs} == {"held"}
    assert not rec.differences({"AAA": 5.0}, set(rec.open_orders))
    diffs = restarted.reconcile().differences({}, [])
    assert {d["kind"] for d in diffs} == {"position", "order_unknown_to_runner"}
    assert next(d for d in diffs if d["kind"] == "position")["stop_known"] is True


def test_bracket_legs_are_reanchored_at_the_fill_once(stub_factory) -> None:
    cid = _intent(9).client_order_id
    legs = [order_json("leg-tp", side="sell", qty=2, type_="limit", limit=10.9, status="new", order_class="bracket"),
            order_json("leg-sl", side="sell", qty=2, type_="stop", stop=9.1, status="new", order_class="bracket")]
    parent = order_json(cid, qty=2, status="filled", order_class="bracket", legs=legs, filled_qty=2, price=10.02)

    def routes(method: str, path: str, q: dict[str, str], body: Any) -> Any:
        if path == "/v2/orders:by_client_order_id":
            return 200, parent
        if method == "PATCH":  # Alpaca's replace: the old leg is replaced by a new order
            old = next(x for x in parent["legs"] if path.endswith(x["id"]))
            new = {**old, "id": str(uuid.uuid4()), "replaces": old["id"],
                   **{k: str(v) for k, v in body.items() if k in ("limit_price", "stop_price")}}
            parent["legs"] = [new if x is old else x for x in parent["legs"]]
            return 200, new
        return NOT_FOUND

    stub = stub_factory(routes)
    broker = _stub_broker(stub)
    got = broker.reanchor_bracket(cid, stop_loss=9.8512, take_profit=10.3049)
    assert sorted((x.type.value, float(x.stop_price or x.limit_price)) for x in got) == [
        ("limit", 10.31), ("stop", 9.85)]  # anchored at the fill, on ticks away from the market
    assert len(stub.calls("PATCH")) == 2
    again = broker.reanchor_bracket(cid, stop_loss=9.8512, take_profit=10.3049)
    assert {str(x.id) for x in again} == {str(x.id) for x in got}
    assert len(stub.calls("PATCH")) == 2  # a replay after a restart changes nothing


def test_open_orders_reads_every_page(sim_and_clock) -> None:
    sim, clock = sim_and_clock
    broker = _sim_broker(sim, clock, page_limit=2)
    cids = []
    for i in range(7):
        o = broker.submit(_intent(20 + i, type="limit", limit_price=5.0 + i / 100, time_in_force="gtc"))
        cids.append(o.client_order_id)
        if i % 3 != 1:
            sim.step()  # two orders share a submitted_at across a page edge
    assert {o.client_order_id for o in broker.open_orders()} == set(cids)
    assert set(broker.reconcile().open_orders) == set(cids)


def test_no_sell_beyond_the_holding(sim_and_clock) -> None:
    sim, clock = sim_and_clock
    broker = _sim_broker(sim, clock)
    broker.submit(_intent(30, qty=5))
    sim.step()
    clamped = broker.submit(_intent(31, side="sell", qty=8, intent="exit"))
    assert float(clamped.qty) == 5  # cut to what is held
    sim.step()
    with pytest.raises(OversellRefused, match="nothing held"):
        broker.submit(_intent(32, side="sell", qty=1, intent="exit"))
    assert broker.positions() == []  # flat, never short
    orders = sim.call(lambda: [(o.side, o.qty) for o in sim.engine.orders.values()])
    assert len(orders) == 2
    # the same (already filled) exit decision again: the placed order, not a refusal
    again = broker.submit(_intent(31, side="sell", qty=8, intent="exit"))
    assert str(again.id) == str(clamped.id)


def test_shares_promised_to_bracket_legs_are_not_sold_twice_and_exit_frees_them(sim_and_clock) -> None:
    sim, clock = sim_and_clock
    broker = _sim_broker(sim, clock)
    broker.submit(_intent(40, qty=4, take_profit=12.0, stop_loss=8.0), base_price=10.0)
    sim.step()
    with pytest.raises(OversellRefused, match="promised to open orders"):
        broker.submit(_intent(41, side="sell", qty=4, intent="exit"))
    out = broker.exit_position(_intent(42, side="sell", qty=1, intent="exit"))
    assert out is not None and float(out.qty) == 4  # exactly the held qty, whatever the intent said
    sim.step()
    assert broker.positions() == [] and broker.open_orders() == []
    legs = sim.call(lambda: [o.status for o in sim.engine.orders.values() if o.parent is not None])
    assert sorted(legs) == ["canceled", "canceled"]
    # a restart replays the exit decision: the exit already sent is returned, nothing new is placed
    assert str(broker.exit_position(_intent(42, side="sell", qty=1, intent="exit")).id) == str(out.id)
    assert broker.exit_position(_intent(43, side="sell", qty=1, intent="exit")) is None  # nothing held


def test_exit_finds_a_held_stop_that_the_open_listing_hides(stub_factory) -> None:
    tp = order_json("leg-tp", side="sell", qty=3, type_="limit", limit=11.0, status="new", order_class="bracket")
    sl = order_json("leg-sl", side="sell", qty=3, type_="stop", stop=9.0, status="held", order_class="bracket")
    parent = order_json("tl-entry", qty=3, status="filled", order_class="bracket", legs=[tp, sl], filled_qty=3,
                        price=10.0)
    sells: list[dict[str, Any]] = []

    def routes(method: str, path: str, q: dict[str, str], body: Any) -> Any:
        legs_open = [x for x in (tp, sl) if x["status"] in ("new", "held")]
        if method == "DELETE" and path.startswith("/v2/orders/"):
            leg = next(x for x in (tp, sl) if path.endswith(x["id"]))
            leg["status"] = "canceled"  # worst case: no OCO cascade, each leg must be canceled
            return 204, None
        if method == "GET" and path == "/v2/orders":
            if q.get("status") == "open":  # Alpaca's nested listing drops the filled parent; flat hides `held`
                return 200, [] if q.get("nested") == "True" else [x for x in legs_open if x["status"] == "new"]
            return 200, [parent]
        if path == "/v2/positions/AAA":
            free = 0 if legs_open else 3
            return 200, {"asset_id": tp["asset_id"], "symbol": "AAA", "exchange": "NASDAQ",
                         "asset_class": "us_equity", "avg_entry_price": "10", "qty": "3", "side": "long",
                         "market_value": "30", "cost_basis": "30", "unrealized_pl": "0", "unrealized_plpc": "0",
                         "unrealized_intraday_pl": "0", "unrealized_intraday_plpc": "0", "current_price": "10",
                         "lastday_price": "10", "change_today": "0", "qty_available": str(free)}
        if method == "POST" and path == "/v2/orders":
            sells.append(body)
            return 200, order_json(body["client_order_id"], side="sell", qty=body["qty"], status="accepted")
        return NOT_FOUND

    stub = stub_factory(routes)
    out = _stub_broker(stub).exit_position(_intent(44, side="sell", qty=1, intent="exit"), poll_s=0.01)
    assert (tp["status"], sl["status"]) == ("canceled", "canceled")
    assert len(sells) == 1 and float(sells[0]["qty"]) == 3 and out is not None


def test_size_from_equity_not_buying_power(stub_factory) -> None:
    stub = stub_factory(lambda m, p, q, b: (200, account_json(equity=10_000.0, buying_power=40_000.0)))
    snap = _stub_broker(stub).account_snapshot()
    assert snap.equity == 10_000.0 and snap.buying_power == 40_000.0
    assert _stub_broker(stub).equity() == 10_000.0


def test_fills_since_reads_every_page_of_activities(stub_factory) -> None:
    fills = [{"id": f"20241101140000000::{i:04d}", "activity_type": "FILL", "transaction_time":
              f"2024-11-01T14:{i // 60:02d}:{i % 60:02d}.000Z", "type": "fill", "price": "10.5", "qty": "1",
              "side": "buy", "symbol": "AAA", "leaves_qty": "0", "order_id": str(uuid.uuid4()), "cum_qty": "1",
              "order_status": "filled"} for i in range(130)]

    def routes(method: str, path: str, q: dict[str, str], body: Any) -> Any:
        if path != "/v2/account/activities/FILL":
            return NOT_FOUND
        start = 0 if "page_token" not in q else 1 + [f["id"] for f in fills].index(q["page_token"])
        return 200, fills[start:start + int(q["page_size"])]

    stub = stub_factory(routes)
    got = _stub_broker(stub).fills_since(pd.Timestamp("2024-11-01 13:30", tz="UTC").to_pydatetime())
    assert len(got) == 130 and got[-1].time == pd.Timestamp("2024-11-01T14:02:09Z")
    assert [q.get("page_token") for _, _, q, _ in stub.requests] == [None, fills[99]["id"]]


def test_fills_since_against_the_sim(sim_and_clock) -> None:
    sim, clock = sim_and_clock
    broker = _sim_broker(sim, clock)
    since = sim.call(lambda: sim.engine.now).to_pydatetime()
    broker.submit(_intent(50, qty=2))
    sim.step()
    fills = broker.fills_since(since)
    # from account activities where the venue has them, else from the orders' fills
    assert [(f.symbol, f.side, f.qty) for f in fills] == [("AAA", "buy", 2.0)]
    assert fills[0].price == pytest.approx(10.0, abs=0.01)  # the bar's open (plus the sim's slippage)
    assert broker.reconcile(since=since).fills == fills


def test_fills_since_falls_back_to_orders_on_a_venue_without_activities(stub_factory) -> None:
    filled = order_json("tl-x", qty=3, status="filled", filled_qty=3, price=10.5,
                        filled_at="2024-11-01T14:05:00.000000Z")
    old = order_json("tl-old", qty=1, status="filled", filled_qty=1, price=9.0,
                     filled_at="2024-11-01T13:31:00.000000Z")

    def routes(method: str, path: str, q: dict[str, str], body: Any) -> Any:
        if path == "/v2/orders" and q.get("status") == "all":
            return 200, [filled, old]
        return NOT_FOUND

    fills = _stub_broker(stub_factory(routes)).fills_since(pd.Timestamp("2024-11-01 14:00", tz="UTC").to_pydatetime())
    assert [(f.symbol, f.qty, f.price, f.source) for f in fills] == [("AAA", 3.0, 10.5, "orders")]


def test_broker_module_does_not_import_the_sim() -> None:
    code = "import sys, live.broker; print(sorted(m for m in sys.modules if m.startswith('live.sim')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    from live.credentials import sim_keys
    from live.sim.server import sim_keys as sims_own

    assert sim_keys() == sims_own()  # the adapter reaches the sim with the sim's own defaults


def test_a_limit_brackets_levels_are_kept_a_cent_from_its_limit_price(sim_and_clock) -> None:
    """Catches: the bracket base taken from the last price even for a limit entry. Alpaca (and the sim) check a
    limit entry's take-profit and stop against its limit price: a take-profit at the limit was sent unchanged
    and refused (422), and a dip-buy's take-profit under the last price was moved above it (a changed decision)."""
    sim, clock = sim_and_clock
    broker = _sim_broker(sim, clock)
    up = broker.submit(_intent(60, type="limit", limit_price=10.5, take_profit=10.5, stop_loss=9.0), base_price=10.0)
    assert up.status.value == "new"
    assert sorted(float(x.limit_price or x.stop_price) for x in up.legs) == [9.0, 10.51]
    dip = valid_prices(_intent(61, type="limit", limit_price=9.5, take_profit=9.9, stop_loss=9.495), base_price=10.0)
    assert (dip.take_profit, dip.stop_loss) == (9.9, 9.49)  # as decided: both a cent or more from the 9.50 limit
