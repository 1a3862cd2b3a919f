"""The sim is closed to strangers and never answers a client's mistake with a 500 (issue 10, security first)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.bars import Panel
from live.sim import SimConfig, SimServer
from live.sim.app import build_app

UNAUTHORIZED = {"code": 40110000, "message": "request is not authorized"}  # Alpaca's 401 body


def _panel(n: int = 30) -> Panel:
    # datetime64[ns] as data.catalog reads it (pandas' own default unit lets far dates through that ns cannot hold)
    idx = pd.date_range("2024-11-01 13:30", periods=n, freq="1min", tz="UTC").as_unit("ns")
    close = np.column_stack([100.0 + 0.1 * np.arange(n), np.full(n, 0.5)])
    return Panel(index=idx, symbols=("AAA", "PNY"), open=close - 0.01, high=close + 0.1, low=close - 0.1,
                 close=close, volume=np.full((n, 2), 1e6))


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(_panel(), SimConfig(slippage=0.001), rate_limit=10_000_000) as s:
        yield s


def _keys(sim: SimServer) -> dict[str, str]:
    return {"APCA-API-KEY-ID": sim.api_key, "APCA-API-SECRET-KEY": sim.secret_key}


def _rest_routes(sim: SimServer) -> list[tuple[str, str]]:
    routes = [(r.method, r.resource.canonical) for r in build_app(sim.hub).router.routes()
              if r.method in ("GET", "POST", "PATCH", "DELETE") and r.resource is not None]
    return [(m, p.replace("{order_id}", "x").replace("{symbol}", "AAA").replace("{activity_type}", "FILL"))
            for m, p in routes if p not in ("/stream", "/v2/{feed}")]


UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
ORDER = {"symbol": "AAA", "qty": 1, "side": "buy", "type": "market", "time_in_force": "day"}


def test_an_upgrade_header_on_rest_paths_bypasses_nothing(sim: SimServer) -> None:
    """The reported bypass: with `Upgrade: websocket` and no keys the sim placed orders and stepped the clock."""
    k0, n0 = sim.engine.k, len(sim.engine.orders)
    for method, path in _rest_routes(sim):
        body = json.dumps(ORDER) if method in ("POST", "PATCH") else None
        for headers in (UPGRADE, {**UPGRADE, "APCA-API-KEY-ID": "nope", "APCA-API-SECRET-KEY": "wrong"}):
            r = requests.request(method, sim.url + path, data=body, headers=headers, timeout=10)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.headers["Content-Type"].startswith("application/json") and r.json() == UNAUTHORIZED
    assert (sim.engine.k, len(sim.engine.orders)) == (k0, n0)  # nothing placed, the clock did not move
    # the stream paths asked for as plain REST need keys as well
    for path in ("/stream", "/v2/iex"):
        r = requests.get(sim.url + path, timeout=10)
        assert (r.status_code, r.json()) == (401, UNAUTHORIZED)
    # with good keys an upgrade header on a REST path is just an ordinary request
    r = requests.post(f"{sim.url}/v2/orders", json=ORDER, headers={**UPGRADE, **_keys(sim)}, timeout=10)
    assert r.status_code == 200 and r.json()["symbol"] == "AAA"
    r = requests.post(f"{sim.url}/v2/orders", json={**ORDER, "qty": -1}, headers={**UPGRADE, **_keys(sim)},
                      timeout=10)
    assert r.status_code == 422 and r.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("headers", [{}, {"APCA-API-KEY-ID": "tierlab-sim-key"},
                                     {"APCA-API-KEY-ID": "nope", "APCA-API-SECRET-KEY": "wrong"},
                                     {"APCA-API-KEY-ID": "tierlab-sim-key", "APCA-API-SECRET-KEY": "tierlab-sim-x"},
                                     {"APCA-API-KEY-ID": "tierlab-sim-kéy", "APCA-API-SECRET-KEY": "sécret"}],
                         ids=["none", "key-only", "wrong-both", "wrong-secret", "non-ascii"])
def test_missing_or_wrong_keys_get_alpacas_401_on_every_route(sim: SimServer, headers: dict) -> None:
    for method, path in _rest_routes(sim):
        r = requests.request(method, sim.url + path, headers=headers, timeout=10)
        assert (r.status_code, r.json()) == (401, UNAUTHORIZED), (method, path)


def test_deep_json_and_huge_numbers_are_json_4xx(sim: SimServer) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    for raw in (deep, '{"symbol": ' + deep + "}", '{"a":' * 50_000 + "1" + "}" * 50_000):
        r = requests.post(f"{sim.url}/v2/orders", data=raw, headers={**_keys(sim), "Content-Type": "application/json"},
                          timeout=30)
        assert r.status_code == 400 and r.json()["code"] == 40010001, r.text[:200]
    for qty in (1e308, "1e308", 1.7976931348623157e308):
        r = requests.post(f"{sim.url}/v2/orders", json={**ORDER, "qty": qty}, headers=_keys(sim), timeout=10)
        assert r.status_code == 403 and r.json()["message"] == "insufficient buying power", r.text
    r = requests.post(f"{sim.url}/v2/orders", json={**ORDER, "notional": 1e308, "qty": None}, headers=_keys(sim),
                      timeout=10)
    assert r.status_code == 403 and r.json()["code"] == 40310000, r.text


# ------------------------------------------------------------------ the property test
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)
WORDS = st.sampled_from(["AAA", "aaa", "PNY", "ZZZ", "", "buy", "sell", "market", "limit", "stop", "stop_limit",
                         "trailing_stop", "day", "gtc", "opg", "cls", "ioc", "fok", "simple", "bracket", "oco", "oto"])
NUMS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**400), 10**400),
                 st.sampled_from(["1", "0.1", "-1", "1e308", "nan", "inf", "1.005", "0.00001", "abc", ""]))
FIELD = st.one_of(JSON, WORDS, NUMS)
VALID = {"symbol": ["AAA", "AAA", "PNY"], "qty": [1, 2.5, 1e308, "1e308", 10**400], "side": ["buy", "buy", "sell"],
         "type": ["market", "market", "limit", "stop", "stop_limit", "trailing_stop"],
         "time_in_force": ["day", "day", "day", "gtc", "opg", "cls", "ioc", "fok"],
         "limit_price": [99.5, 0.4321, 1e308], "stop_price": [101.0, 0.45], "trail_percent": [1.5],
         "order_class": ["simple", "simple", "simple", "simple", "bracket", "oco", "oto"]}  # repeats weight the draw
# mostly-valid orders with up to three fields fuzzed reach the deep checks (funds, brackets, formatting the answer)
FUZZ_KEYS = [*VALID, "notional", "trail_price", "extended_hours", "client_order_id", "take_profit", "stop_loss"]
EXITS = st.fixed_dictionaries({}, optional={
    "take_profit": st.one_of(FIELD, st.fixed_dictionaries({"limit_price": st.one_of(st.just(110.0), FIELD)})),
    "stop_loss": st.one_of(FIELD, st.fixed_dictionaries({"stop_price": st.one_of(st.just(90.0), FIELD)},
                                                        optional={"limit_price": FIELD}))})
ORDER_BODY = st.builds(lambda base, exits, fuzz: {**base, **exits, **fuzz},
                       st.fixed_dictionaries({k: st.sampled_from(v) for k, v in VALID.items()}), EXITS,
                       st.dictionaries(st.sampled_from(FUZZ_KEYS), FIELD, max_size=3))
QUERY_NAMES = st.sampled_from(["limit", "start", "end", "page_token", "after", "until", "qty", "percentage", "status",
                               "timeframe", "direction", "nested", "side", "symbols", "period", "date_end",
                               "activity_types", "page_size", "date", "client_order_id", "cancel_orders", "n"])
FAR = st.sampled_from(["1500-01-01", "2500-01-01", "0001-01-01", "9999-12-31", "400A", "1000D", "999W"])
QUERY = st.dictionaries(QUERY_NAMES, st.one_of(st.text(max_size=20), WORDS, NUMS.map(str), FAR), max_size=4)
PATHS = st.sampled_from([("GET", "/v2/orders"), ("GET", "/v2/stocks/bars"), ("GET", "/v2/account/activities"),
                         ("GET", "/v2/account/activities/FILL"), ("GET", "/v2/account/portfolio/history"),
                         ("GET", "/v2/calendar"), ("DELETE", "/v2/positions/AAA"), ("DELETE", "/v2/positions"),
                         ("GET", "/v2/orders:by_client_order_id"), ("GET", "/v2/assets/AAA"), ("DELETE", "/v2/orders")])
FUZZ = settings(max_examples=220, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


def test_fuzzed_order_bodies_and_query_strings_never_get_a_500(sim: SimServer) -> None:
    """Hypothesis throws malformed (and mostly-valid) order bodies, PATCHes and query strings at the app:
    every answer is JSON with a status below 500, over at least 300 requests."""
    seen: list[int] = []
    sim.step(3)  # closed bars and equity history, so the bars and portfolio-history queries have data to compare

    def check(r: requests.Response, what: object) -> None:
        seen.append(r.status_code)
        assert r.status_code < 500, (what, r.status_code, r.text[:300])
        if r.status_code != 204:
            body = r.json()  # every answer is JSON, errors included
            if r.status_code >= 400:
                assert {"code", "message"} <= set(body), (what, body)

    s = requests.Session()
    s.headers.update({**_keys(sim), "Content-Type": "application/json"})

    @FUZZ
    @given(body=st.one_of(ORDER_BODY, JSON), patch=st.booleans(), upgrade=st.booleans())
    def bodies(body: object, patch: bool, upgrade: bool) -> None:
        raw = json.dumps(body, allow_nan=True)
        extra = UPGRADE if upgrade else {}
        check(s.post(f"{sim.url}/v2/orders", data=raw, headers=extra, timeout=30), body)
        if patch:
            oid = sim.call(lambda: next((o.id for o in sim.engine.orders.values() if o.is_open), "none"))
            check(s.patch(f"{sim.url}/v2/orders/{oid}", data=raw, headers=extra, timeout=30), ("PATCH", body))

    @FUZZ
    @given(route=PATHS, query=QUERY)
    def queries(route: tuple[str, str], query: dict) -> None:
        check(s.request(route[0], sim.url + route[1], params=query, timeout=30), (route, query))

    bodies()
    queries()
    assert len(seen) >= 300 and max(seen) < 500, (len(seen), max(seen))
    assert {200, 400, 403, 422} <= set(seen)  # the fuzz reached acceptance, parsing, funds and validation


def test_keys_are_never_taken_from_the_command_line() -> None:
    """A key on a command line shows in `ps`: the CLI has no --key/--secret (SIM_API_KEY / SIM_SECRET_KEY only)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "live.sim", "--replay", "2024-11-01", "--key", "k", "--secret", "s"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unrecognized arguments: --key k --secret s" in r.stderr
    assert "--key" not in subprocess.run([sys.executable, "-m", "live.sim", "--help"], capture_output=True, text=True,
                                         timeout=60).stdout


def test_streams_answer_garbage_and_strange_keys_without_crashing(sim: SimServer) -> None:
    """Deeply nested, non-JSON and non-ASCII auth messages on both websockets get an answer, never a dead socket."""
    import asyncio

    import aiohttp
    import msgpack

    listeners = len(sim.hub.trade_listeners)

    async def run() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(sim.trade_stream_url) as ws:
                for junk in ("[" * 50_000 + "]" * 50_000, "not json", '{"action": "listen"}'):
                    await ws.send_str(junk)
                    reply = json.loads((await ws.receive(timeout=10)).data)
                    assert reply["stream"] in ("error", "authorization"), reply
                    assert reply["stream"] == "error" or reply["data"]["status"] == "unauthorized"
                assert len(sim.hub.trade_listeners) == listeners  # an unauthenticated listen adds nothing
                await ws.send_str(json.dumps({"action": "auth", "data": {"key_id": "kéy\ud800", "secret_key": ["x"]}}))
                reply = json.loads((await ws.receive(timeout=10)).data)
                assert reply["data"]["status"] == "unauthorized"
            async with http.ws_connect(sim.data_stream_url) as ws:
                assert msgpack.unpackb((await ws.receive(timeout=10)).data)[0]["msg"] == "connected"
                await ws.send_bytes(msgpack.packb({"action": "subscribe", "bars": ["AAA"]}))
                assert msgpack.unpackb((await ws.receive(timeout=10)).data)[0]["code"] == 401
                await ws.send_bytes(msgpack.packb({"action": "auth", "key": "kéy", "secret": 7}))
                assert msgpack.unpackb((await ws.receive(timeout=10)).data)[0]["msg"] == "auth failed"
        assert sim.hub.bar_subs == {} or all(not v for v in sim.hub.bar_subs.values())

    asyncio.run(run())
    assert requests.get(f"{sim.url}/v2/clock", headers=_keys(sim), timeout=10).status_code == 200  # still serving


FORBIDDEN = 40310000  # Alpaca's 403 code


@pytest.mark.parametrize("headers", [{"Host": "evil.example"}, {"Host": "evil.example:80"},
                                     {"Origin": "http://evil.example"}, {"Origin": "null"}])
def test_a_web_page_cannot_reach_the_sim_through_a_browser(sim: SimServer, headers: dict) -> None:
    """DNS rebinding (a page's own name resolving to 127.0.0.1) or a cross-site page: the published default
    keys must not let it place orders or read the streams."""
    n0 = len(sim.engine.orders)
    for method, path, extra in (("POST", "/v2/orders", {}), ("GET", "/v2/account", {}), ("GET", "/stream", UPGRADE)):
        r = requests.request(method, sim.url + path, data=json.dumps(ORDER) if method == "POST" else None,
                             headers={**_keys(sim), **extra, **headers}, timeout=10)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        assert r.json()["code"] == FORBIDDEN
    assert len(sim.engine.orders) == n0


@pytest.mark.parametrize("headers", [{}, {"Host": "localhost"}, {"Host": "[::1]:1"},
                                     {"Origin": "http://127.0.0.1:8888"}, {"Origin": "http://localhost"}])
def test_the_machines_own_clients_are_served(sim: SimServer, headers: dict) -> None:
    r = requests.get(sim.url + "/v2/account", headers={**_keys(sim), **headers}, timeout=10)
    assert r.status_code == 200, r.text
