"""The sim's HTTP surface against bad input, priceless symbols, bar pagination and an empty catalog."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import requests
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.requests import StockBarsRequest
from alpaca.data.timeframe import TimeFrame

from data.bars import Panel
from live.sim import SimConfig, SimServer
from live.sim.app import build_app

SYMS = ("AAA", "BBB", "ZZZ")  # ZZZ has no bar at all in the replay


def _panel(n: int = 30) -> Panel:
    idx = pd.date_range("2024-11-01 13:30", periods=n, freq="1min", tz="UTC")
    t = np.arange(n, dtype=float)
    close = np.column_stack([100.0 + 0.1 * t, 50.0 + 0.05 * t, np.full(n, np.nan)])
    close[[i for i in (4, 5, 17) if i < n], 1] = np.nan  # BBB misses a few minutes: pages must skip them, not invent them
    open_ = close - 0.02
    return Panel(index=idx, symbols=SYMS, open=open_, high=close + 0.1, low=open_ - 0.1, close=close,
                 volume=np.where(np.isnan(close), np.nan, 10_000.0))


def _session(sim: SimServer) -> requests.Session:
    s = requests.Session()
    s.headers.update({"APCA-API-KEY-ID": sim.api_key, "APCA-API-SECRET-KEY": sim.secret_key})
    return s


@pytest.fixture()
def sim() -> Iterator[SimServer]:
    with SimServer(_panel(), SimConfig(slippage=0.001, initial_cash=100_000.0, account="cash"),
                   rate_limit=100_000) as s:
        yield s


def _buy(symbol: str, qty: float, **kw) -> dict:
    return {"symbol": symbol, "qty": qty, "side": "buy", "type": "market", "time_in_force": "day", **kw}


# ------------------------------------------------------------------ 1: a symbol without a price
def test_an_order_for_a_symbol_without_any_price_is_refused_and_buying_power_stays_a_number(sim: SimServer) -> None:
    s = _session(sim)
    for body in (_buy("ZZZ", 1), _buy("ZZZ", 1, type="stop", stop_price=10.0, time_in_force="gtc")):
        r = s.post(f"{sim.url}/v2/orders", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["code"] == 42210000 and "ZZZ" in r.json()["message"]
    acct = s.get(f"{sim.url}/v2/account").json()
    assert acct["buying_power"] == "100000"
    # the buying-power check still bites: 1,500 AAA at ~100 is more than the cash
    r = s.post(f"{sim.url}/v2/orders", json=_buy("AAA", 1_500))
    assert (r.status_code, r.json()["message"]) == (403, "insufficient buying power")


def test_a_resting_buy_is_reserved_at_the_last_known_price_once_its_bars_run_out() -> None:
    p = _panel(6)
    for a in (p.open, p.high, p.low, p.close):
        a[2:, 0] = np.nan  # AAA trades for two minutes, then never again in this replay
    with SimServer(p, SimConfig(slippage=0.001, account="cash"), rate_limit=100_000) as sim:
        sim.step(3)
        s = _session(sim)
        assert s.post(f"{sim.url}/v2/orders", json=_buy("AAA", 100)).status_code == 200
        bp = float(s.get(f"{sim.url}/v2/account").json()["buying_power"])
        assert bp == pytest.approx(100_000 - 100 * p.close[1, 0] * 1.001, abs=0.01)
        r = s.post(f"{sim.url}/v2/orders", json=_buy("BBB", 1_900))  # ~95,300: fits the cash, not what is left
        assert (r.status_code, r.json()["message"]) == (403, "insufficient buying power")


# ------------------------------------------------------------------ 2: bad client input is a JSON 4xx
def _order_id(sim: SimServer) -> str:
    r = _session(sim).post(f"{sim.url}/v2/orders", json=_buy("AAA", 1, type="limit", limit_price=90.0,
                                                                time_in_force="gtc"))
    assert r.status_code == 200, r.text
    return r.json()["id"]


BAD = [  # (method, path, query, raw body, status, text the message must name)
    ("GET", "/v2/stocks/bars", {"symbols": "AAA", "page_token": "garbage"}, None, 400, "page_token"),
    ("GET", "/v2/stocks/bars", {"symbols": "AAA", "page_token": base64.urlsafe_b64encode(b"AAA:x").decode()},
     None, 400, "page_token"),
    ("GET", "/v2/stocks/bars", {"symbols": "AAA", "page_token": base64.urlsafe_b64encode(b"AAA:99999").decode()},
     None, 400, "page_token"),
    ("GET", "/v2/stocks/bars", {"symbols": "AAA", "limit": "ten"}, None, 400, "limit"),
    ("GET", "/v2/stocks/bars", {"symbols": "AAA", "start": "yesterday-ish"}, None, 400, "start"),
    ("GET", "/v2/stocks/bars", {"symbols": "AAA", "end": "NaT"}, None, 400, "end"),
    ("GET", "/v2/stocks/bars", {"symbols": "AAA", "start": "1500-01-01"}, None, 400, "start"),  # was a 500
    ("GET", "/v2/stocks/bars", {"symbols": "AAA", "end": "2500-01-01"}, None, 400, "end"),  # was a 500
    ("PATCH", "/v2/orders/{id}", {}, b"limit_price=91", 400, "body"),
    ("PATCH", "/v2/orders/{id}", {}, b"[91]", 400, "body"),
    ("PATCH", "/v2/orders/{id}", {}, b'{"time_in_force": "forever"}', 422, "time_in_force"),
    ("POST", "/v2/orders", {}, b'["AAA"]', 400, "body"),
    ("POST", "/v2/orders", {}, b"\xff\xfe{", 400, "body"),
    ("POST", "/v2/orders", {}, json.dumps(_buy("AAA", "inf")).encode(), 422, "qty"),
    ("POST", "/v2/orders", {}, json.dumps(_buy("AAA", 1, side=["buy"])).encode(), 422, "side"),
    ("POST", "/v2/orders", {}, json.dumps(_buy("AAA", 1, client_order_id=7)).encode(), 422, "client_order_id"),
    ("POST", "/v2/orders", {}, json.dumps(_buy("AAA", 1, order_class="bracket", take_profit=5,
                                                stop_loss={"stop_price": 1})).encode(), 422, "take_profit"),
    ("GET", "/v2/orders", {"limit": "all"}, None, 400, "limit"),
    ("GET", "/v2/orders", {"status": "all", "limit": "-1"}, None, 400, "limit"),  # was 200 minus the oldest order
    ("GET", "/v2/orders", {"status": "all", "limit": "0"}, None, 400, "limit"),  # was 200 and an empty list
    ("GET", "/v2/orders", {"direction": "sideways"}, None, 400, "direction"),
    ("GET", "/v2/orders", {"after": "tuesday"}, None, 400, "after"),
    ("GET", "/v2/orders", {"status": "pending"}, None, 422, "status"),
    ("GET", "/v2/calendar", {"start": "soon"}, None, 400, "start"),
    ("DELETE", "/v2/positions/AAA", {"qty": "half"}, None, 400, "qty"),
    ("DELETE", "/v2/positions/AAA", {"percentage": "nan"}, None, 400, "percentage"),
    ("POST", "/sim/step", {"n": "lots"}, None, 400, "n"),
    ("GET", "/v2/no-such-endpoint", {}, None, 404, "not found"),
    ("PUT", "/v2/account", {}, None, 405, "not allowed"),
]


@pytest.mark.parametrize(("method", "path", "query", "body", "status", "names"), BAD,
                         ids=[f"{m} {p} {'&'.join(q) or (b or b'')[:12]!r}" for m, p, q, b, *_ in BAD])
def test_bad_input_gets_alpaca_json_naming_the_problem(sim: SimServer, method: str, path: str, query: dict,
                                                       body: bytes | None, status: int, names: str) -> None:
    if "{id}" in path:
        path = path.replace("{id}", _order_id(sim))
    r = _session(sim).request(method, f"{sim.url}{path}", params=query, data=body,
                              headers={"Content-Type": "application/json"} if body is not None else {})
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json"), r.text
    err = r.json()
    codes = {400: {40010001}, 422: {40010001, 42210000}, 404: {40410000}, 405: {40500000}}[status]
    assert set(err) >= {"code", "message"} and err["code"] in codes, err  # Alpaca answers 422 with either code
    assert names in err["message"].lower(), err


def test_a_portfolio_history_period_reaching_before_1678_is_the_whole_replay_not_a_500() -> None:
    """period=400A gave 500 OutOfBoundsDatetime on a catalog panel (its index is datetime64[ns], where 400 years
    back does not fit); Alpaca takes any '<n>A' and answers the history it has."""
    import dataclasses

    panel = _panel()
    panel = dataclasses.replace(panel, index=panel.index.as_unit("ns"))  # as data.catalog reads it
    with SimServer(panel, SimConfig(), rate_limit=100_000) as sim:
        sim.step(3)  # some equity history to compare against the window's start
        s = _session(sim)
        whole = s.get(f"{sim.url}/v2/account/portfolio/history", params={"period": "400A", "timeframe": "1Min"})
        assert whole.status_code == 200, whole.text
        week = s.get(f"{sim.url}/v2/account/portfolio/history", params={"period": "1W", "timeframe": "1Min"}).json()
        assert len(week["timestamp"]) == 3 and whole.json()["timestamp"] == week["timestamp"]
        assert whole.json()["base_value"] == week["base_value"] == 100_000


def test_calendar_far_outside_the_exchange_calendar_is_an_empty_list_not_a_500(sim: SimServer) -> None:
    r = _session(sim).get(f"{sim.url}/v2/calendar", params={"start": "1850-01-01", "end": "1850-02-01"})
    assert (r.status_code, r.json()) == (200, [])


def test_no_route_leaks_a_500_for_garbage_parameters_or_bodies(sim: SimServer) -> None:
    """Every REST route, each query parameter the sim reads set to garbage, with and without a garbage body."""
    params = ["limit", "start", "end", "page_token", "after", "until", "qty", "percentage", "n", "status",
              "timeframe", "direction", "nested", "side", "client_order_id", "cancel_orders", "symbols"]
    s = _session(sim)
    oid = _order_id(sim)
    sim.step(1)
    routes = [(r.method, r.resource.canonical) for r in build_app(sim.hub).router.routes()
              if r.method in ("GET", "POST", "PATCH", "DELETE") and r.resource is not None]
    routes = [(m, p) for m, p in routes if p not in ("/stream", "/v2/{feed}")]  # websockets
    assert len(routes) >= 18
    seen = 0
    for method, path in routes:
        url = sim.url + path.replace("{order_id}", oid).replace("{symbol}", "AAA")
        for name in params:
            for value in ("garbage", "-1e999"):
                base = {"symbols": "AAA"} if name != "symbols" else {}
                for body in (None, b"{not json") if method in ("POST", "PATCH") else (None,):
                    r = s.request(method, url, params={**base, name: value}, data=body,
                                  headers={"Content-Type": "application/json"})
                    seen += 1
                    assert r.status_code < 500, (method, path, name, value, body, r.status_code, r.text)
                    if r.status_code >= 400:
                        assert r.headers["Content-Type"].startswith("application/json"), (method, path, r.text)
                        assert {"code", "message"} <= set(r.json())
    assert seen == sum(len(params) * 2 * (2 if m in ("POST", "PATCH") else 1) for m, _ in routes)


def test_an_unexpected_error_is_a_short_json_500_not_an_html_page(sim: SimServer,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> float:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(sim.engine, "equity", broken)
    r = _session(sim).get(f"{sim.url}/v2/account")
    assert r.status_code == 500 and r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {"code": 50010000, "message": "internal error (ZeroDivisionError)"}
    assert _session(sim).get(f"{sim.url}/v2/clock").status_code == 200  # the sim keeps serving


# ------------------------------------------------------------------ 3: an empty catalog
def test_cli_on_an_empty_catalog_exits_2_with_one_line_pointing_at_the_sample() -> None:
    try:  # before the check it served zero symbols forever: the timeout is the failure
        r = subprocess.run([sys.executable, "-m", "live.sim", "--replay", "2024-11-01", "--port", "0"],
                           capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("python -m live.sim served an empty catalog instead of exiting")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "no bars for 2024-11-01" in lines[0] and "--sample" in lines[0] and "python -m data sample" in lines[0]


def test_a_taken_or_impossible_port_is_one_line_not_a_traceback() -> None:
    """Catches: bind() errors escaping as tracebacks (OSError 'Address already in use', OverflowError for 99999)."""
    import socket

    from tierlab.errors import ConfigError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: .*--port"):
            SimServer(_panel(), port=port).start()
    r = subprocess.run([sys.executable, "-m", "live.sim", "--replay", "2024-11-01", "--port", "99999"],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr.strip()) == (2, "live.sim: --port must be 0..65535 (0 picks a free port), got 99999")


def test_cli_rate_limit_flag_reaches_the_sim_and_a_bad_one_is_one_line(home, monkeypatch, capsys) -> None:
    """--rate-limit (benchmarks raise it so they never stall on 429) reaches the server; default Alpaca's 200."""
    import live.sim.__main__ as sim_cli

    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def capture(panel: object, cfg: object, **kw: object) -> None:
        seen.update(kw)
        raise Stop

    monkeypatch.setattr("live.sim.server.SimServer", capture)
    with pytest.raises(Stop):
        sim_cli.main(["--replay", "2024-10-22", "--port", "0", "--rate-limit", "100000"])
    assert seen["rate_limit"] == 100_000
    with pytest.raises(Stop):
        sim_cli.main(["--replay", "2024-10-22", "--port", "0"])
    assert seen["rate_limit"] == 200
    assert sim_cli.main(["--replay", "2024-10-22", "--port", "0", "--rate-limit", "0"]) == 2
    assert capsys.readouterr().err.strip() == "live.sim: --rate-limit must be >= 1 request per minute, got 0"


# ------------------------------------------------------------------ 4: following next_page_token
def _rows(bars: dict) -> list[tuple[str, str, float]]:
    return [(sym, b["t"], b["c"]) for sym, lst in bars.items() for b in lst]


def test_bars_pages_followed_to_the_end_equal_the_one_page_answer() -> None:
    panel = _panel()
    with SimServer(panel, rate_limit=100_000) as big, SimServer(panel, rate_limit=100_000, bars_page_limit=4) as small:
        big.step(len(panel.index))
        small.step(len(panel.index))
        t0, t1 = panel.index[2], panel.index[24]
        q = {"symbols": "BBB,AAA", "timeframe": "1Min", "start": t0.isoformat(), "end": t1.isoformat()}
        one = _session(big).get(f"{big.url}/v2/stocks/bars", params={**q, "limit": 10_000}).json()
        assert one["next_page_token"] is None
        want = _rows(one["bars"])
        # the one-page answer itself: symbol by symbol, in time, only minutes that traded, inside [t0, t1]
        expect = [(s, t.strftime("%Y-%m-%dT%H:%M:%SZ"), float(panel.close[i, j]))
                  for j, s in enumerate(SYMS[:2]) for i, t in enumerate(panel.index)
                  if t0 <= t <= t1 and not np.isnan(panel.close[i, j])]
        assert want == expect and len(want) == 23 + 20

        for sim, limit in ((big, 5), (small, None), (small, 3)):  # a client's limit, the server's cap, both
            s, got, token, pages = _session(sim), [], None, 0
            while True:
                page = s.get(f"{sim.url}/v2/stocks/bars",
                             params={**q, **({"limit": limit} if limit else {}), **({"page_token": token} if token else {})})
                assert page.status_code == 200, page.text
                body = page.json()
                rows = _rows(body["bars"])
                assert 0 < len(rows) <= (limit or 4)
                got += rows
                pages += 1
                token = body["next_page_token"]
                if token is None:
                    break
                assert pages < 100, "pagination does not end"
            assert got == want, (limit, pages)
            assert pages == -(-len(want) // (limit or 4))

        # alpaca-py follows the tokens itself: the capped sim makes it page (4 bars at a time)
        dc = StockHistoricalDataClient(small.api_key, small.secret_key, url_override=small.url)
        req = StockBarsRequest(symbol_or_symbols=["BBB", "AAA"], timeframe=TimeFrame.Minute,
                               start=t0.to_pydatetime(), end=t1.to_pydatetime())
        remaining = lambda: int(_session(small).get(f"{small.url}/v2/clock").headers["X-Ratelimit-Remaining"])  # noqa: E731
        before = remaining()
        data = dc.get_stock_bars(req).data
        assert before - remaining() == -(-len(want) // 4) + 1  # it asked page by page (+1: this probe)
        got = [(sym, pd.Timestamp(b.timestamp).strftime("%Y-%m-%dT%H:%M:%SZ"), b.close)
               for sym in sorted(data) for b in data[sym]]
        assert got == want
        part = dc.get_stock_bars(StockBarsRequest(symbol_or_symbols=["BBB", "AAA"], timeframe=TimeFrame.Minute,
                                                  start=t0.to_pydatetime(), end=t1.to_pydatetime(), limit=26)).data
        assert [(sym, b.close) for sym in sorted(part) for b in part[sym]] == [(r[0], r[2]) for r in want[:26]]


def test_bars_mid_replay_never_include_a_minute_that_has_not_closed(sim: SimServer) -> None:
    """No look-ahead: whatever start/end a client asks for, /v2/stocks/bars stops at the last closed bar."""
    sim.step(10)  # bars 0..9 have closed; the replay holds 30
    idx, s = sim.engine.panel.index, _session(sim)
    last = idx[9].strftime("%Y-%m-%dT%H:%M:%SZ")
    for q, n_aaa in (({}, 10), ({"end": "2030-01-01T00:00:00Z"}, 10), ({"start": idx[7].isoformat()}, 3),
                     ({"start": idx[7].isoformat(), "end": idx[25].isoformat()}, 3), ({"start": idx[12].isoformat()}, 0)):
        body = s.get(f"{sim.url}/v2/stocks/bars", params={"symbols": "AAA,BBB", **q}).json()
        times = [b["t"] for lst in body["bars"].values() for b in lst]
        assert len(body["bars"].get("AAA", [])) == n_aaa, q
        assert all(t <= last for t in times), (q, max(times))


# ------------------------------------------------------------------ 5: order listings by status
def test_order_listings_by_status_hold_exactly_their_orders_in_arrival_order(sim: SimServer) -> None:
    """open, closed and all after fills, a cancel and a replace: each listing its own orders, oldest first with asc."""
    s = _session(sim)
    sim.step(1)

    def post(body: dict) -> str:
        r = s.post(f"{sim.url}/v2/orders", json=body)
        assert r.status_code == 200, r.text
        return r.json()["id"]

    filled = post(_buy("AAA", 1))
    resting = post(_buy("AAA", 1, type="limit", limit_price=50))
    canceled = post(_buy("BBB", 1, type="limit", limit_price=10))
    replaced = post(_buy("BBB", 1, type="limit", limit_price=20))
    assert s.delete(f"{sim.url}/v2/orders/{canceled}").status_code == 204
    r = s.patch(f"{sim.url}/v2/orders/{replaced}", json={"limit_price": 21})
    assert r.status_code == 200, r.text
    replacement = r.json()["id"]
    sim.step(1)

    def listing(**q: str) -> list[str]:
        r = s.get(f"{sim.url}/v2/orders", params={"direction": "asc", **q})
        assert r.status_code == 200, r.text
        return [o["id"] for o in r.json()]

    assert listing(status="open") == [resting, replacement]
    assert listing(status="closed") == [filled, canceled, replaced]
    assert listing(status="all") == [filled, resting, canceled, replaced, replacement]
    assert listing(status="open", symbols="BBB") == [replacement]
    assert listing(status="closed", symbols="BBB", direction="desc") == [replaced, canceled]


def test_the_sim_logs_a_refused_order_as_one_and_a_flat_symbols_position_lookup_as_routine(
        sim: SimServer, capsys: pytest.CaptureFixture[str]) -> None:
    """A 404 for the position of a flat symbol is an answer, not an order rejection (it was logged as
    `order_rejected` with no ticker); a refused order keeps its `order_rejected` line with its ticker."""
    s = _session(sim)
    capsys.readouterr()
    assert s.get(f"{sim.url}/v2/positions/AAA").status_code == 404
    assert s.post(f"{sim.url}/v2/orders", json=_buy("ZZZ", 1, client_order_id="no-price")).status_code == 422
    assert s.delete(f"{sim.url}/v2/orders/00000000-0000-0000-0000-000000000000").status_code == 404
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "order_rejected" in ln or "request_refused" in ln]
    assert len(lines) == 2, lines
    assert "event='order_rejected'" in lines[0] and "ticker='ZZZ'" in lines[0] and "no-price" in lines[0]
    assert "event='request_refused'" in lines[1] and "method='DELETE'" in lines[1] and "status=404" in lines[1]
