"""`python -m data fetch` against a loopback server that speaks Alpaca's /v2/stocks/bars JSON, pagination included."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from aiohttp import web

from data.__main__ import main
from data.catalog import Catalog
from data.sample import generate_panel

KEY, SECRET = "test-key-id", "test-secret-value"
PAGE = 250  # the fake server's page size: well below a day's bars, so every request paginates


def served_bars() -> dict[str, list[dict]]:
    """Alpaca-shaped raw bars for AAPL and SOXS, 2024-11-01 .. 2024-11-05, plus extended-hours bars."""
    panel = generate_panel("2024-11-01", "2024-11-05", ("AAPL", "SOXS"))
    out: dict[str, list[dict]] = {}
    for s in panel.symbols:
        b = panel.bars(s)
        extra = pd.DataFrame({c: b[c].iloc[:3].to_numpy() for c in b.columns},
                             index=pd.DatetimeIndex(["2024-11-01 12:00", "2024-11-04 22:00", "2024-11-05 13:00"],
                                                    tz="UTC"))  # pre/post-market, as the real feed returns
        b = pd.concat([b, extra]).sort_index()
        out[s] = [{"t": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "o": r.open, "h": r.high, "l": r.low, "c": r.close,
                   "v": int(r.volume), "n": int(r.trade_count), "vw": r.vwap} for t, r in zip(b.index, b.itertuples(),
                                                                                              strict=True)]
    return out


class FakeAlpaca:
    """Serves GET /v2/stocks/bars sorted by symbol then time, `PAGE` bars a page, with next_page_token."""

    def __init__(self, bars: dict[str, list[dict]]) -> None:
        self.bars, self.requests = bars, []

    async def handle(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.requests.append(q)
        if request.headers.get("APCA-API-KEY-ID") != KEY or request.headers.get("APCA-API-SECRET-KEY") != SECRET:
            return web.json_response({"message": "forbidden"}, status=403)
        assert q["timeframe"] == "1Min" and q["feed"] == "iex"
        start, end = pd.Timestamp(q["start"]), pd.Timestamp(q["end"])
        rows = [(s, b) for s in sorted(q["symbols"].split(",")) for b in self.bars.get(s, [])
                if start <= pd.Timestamp(b["t"]) <= end]
        offset = int(q.get("page_token") or 0)
        page = rows[offset: offset + min(PAGE, int(q.get("limit") or PAGE))]
        body: dict[str, dict[str, list[dict]]] = {}
        for s, b in page:
            body.setdefault(s, []).append(b)
        more = offset + len(page) < len(rows)
        return web.json_response({"bars": body, "next_page_token": str(offset + len(page)) if more else None})


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, FakeAlpaca]]:
    fake = FakeAlpaca(served_bars())
    app = web.Application()
    app.router.add_get("/v2/stocks/bars", fake.handle)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", fake
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("ALPACA_API_KEY", KEY)
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)


def test_fetch_writes_only_missing_rth_days_across_pages(server, keys, tmp_path, capsys):
    url, fake = server
    root = tmp_path / "cat"
    cat = Catalog(root)
    held = generate_panel("2024-11-01", "2024-11-05", ("AAPL",)).bars("AAPL").loc["2024-11-04"]
    cat.write("AAPL", held)
    fake.requests.clear()
    args = ["fetch", "--symbols", "AAPL", "SOXS", "--start", "2024-11-01", "--end", "2024-11-05", "--root", str(root)]
    assert main([*args, "--url", url]) == 0
    out = capsys.readouterr().out
    assert "AAPL: wrote 780 bars on 2 new days, skipped 0 days" in out
    firsts = [r for r in fake.requests if not r.get("page_token")]
    assert [(r["symbols"], r["start"][:10]) for r in firsts] == [
        ("AAPL", "2024-11-01"), ("AAPL", "2024-11-05"), ("SOXS", "2024-11-01")]  # Nov 4 AAPL already held
    assert len(fake.requests) > len(firsts)  # next_page_token was followed
    want = generate_panel("2024-11-01", "2024-11-05", ("AAPL", "SOXS"))
    got = cat.read_panel(["AAPL", "SOXS"], "2024-11-01", "2024-11-05")
    assert got.index.equals(want.index)  # extended-hours bars were dropped, the grid is RTH
    for f in ("open", "high", "low", "close", "volume", "vwap", "trade_count"):
        np.testing.assert_allclose(getattr(got, f), getattr(want, f), equal_nan=True)
    assert np.isnan(got.close[:, 1]).sum() > 0  # SOXS gaps stay gaps
    fake.requests.clear()
    assert main([*args, "--url", url]) == 0
    assert fake.requests == []  # nothing missing: no request at all


def test_url_from_environment(server, keys, tmp_path, monkeypatch):
    url, fake = server
    monkeypatch.setenv("TIERLAB_ALPACA_DATA_URL", url)
    fake.requests.clear()
    assert main(["fetch", "--symbols", "AAPL", "--start", "2024-11-05", "--end", "2024-11-05",
                 "--root", str(tmp_path)]) == 0
    assert fake.requests and len(Catalog(tmp_path).days("AAPL")) == 1


def test_missing_keys_is_one_clear_line(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("ALPACA_API_KEY", raising=False)
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)
    code = main(["fetch", "--symbols", "AAPL", "--start", "2024-11-05", "--end", "2024-11-05", "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == ("error: ALPACA_API_KEY not set: export your Alpaca keys to fetch bars "
                           "(`python -m data sample` needs none)")
    assert SECRET not in err


def test_rejected_keys_name_the_request_without_leaking_secrets(server, monkeypatch, tmp_path, capsys):
    url, _ = server
    monkeypatch.setenv("ALPACA_API_KEY", "wrong")
    monkeypatch.setenv("ALPACA_SECRET_KEY", "wrong-secret-value")
    code = main(["fetch", "--symbols", "AAPL", "--start", "2024-11-05", "--end", "2024-11-05", "--root",
                 str(tmp_path), "--url", url])
    err = capsys.readouterr().err
    assert code == 2 and "AAPL (alpaca): request 2024-11-05..2024-11-05 failed" in err
    assert "wrong-secret-value" not in err and not (tmp_path / "bars").exists()


def test_a_reversed_range_is_refused_before_any_request(server, keys, tmp_path, capsys):
    url, fake = server
    fake.requests.clear()
    code = main(["fetch", "--symbols", "AAPL", "--start", "2024-11-05", "--end", "2024-11-01", "--root",
                 str(tmp_path), "--url", url])
    assert code == 2
    assert "empty range: --start 2024-11-05 is after --end 2024-11-01" in capsys.readouterr().err
    assert not fake.requests


def test_an_unfinished_session_is_not_fetched(server, keys, tmp_path):
    """Mid-session on Nov 5 only Nov 1 and 4 are written; the next day's fetch completes Nov 5."""
    from data.importers.alpaca import fetch

    url, _ = server
    cat = Catalog(tmp_path)
    during = pd.Timestamp("2024-11-05 10:00", tz="America/New_York")
    fetch(["AAPL"], "2024-11-01", "2024-11-05", catalog=cat, url=url, progress=False, now=during)
    assert [str(d) for d in cat.days("AAPL")] == ["2024-11-01", "2024-11-04"]
    after = pd.Timestamp("2024-11-06 09:00", tz="America/New_York")
    fetch(["AAPL"], "2024-11-01", "2024-11-05", catalog=cat, url=url, progress=False, now=after)
    assert [str(d) for d in cat.days("AAPL")] == ["2024-11-01", "2024-11-04", "2024-11-05"]
    assert len(Catalog(tmp_path).read_panel(["AAPL"], "2024-11-05", "2024-11-05").bars("AAPL")) == 390


def test_fetch_replaces_synthetic_sample_days_with_real_bars(server, keys, tmp_path, capsys):
    url, fake = server
    cat = Catalog(tmp_path)
    fake_day = generate_panel("2024-11-04", "2024-11-04", ("AAPL",), seed=3).bars("AAPL")
    cat.write("AAPL", fake_day, origin="sample")  # the synthetic sample holds Nov 4
    fake.requests.clear()
    assert main(["fetch", "--symbols", "aapl", "--start", "2024-11-01", "--end", "2024-11-05", "--root",
                 str(tmp_path), "--url", url]) == 0
    out = capsys.readouterr().out
    assert "AAPL: wrote 1170 bars on 2 new days (and replaced the synthetic sample bars of 1 days: 2024-11-04)" in out
    firsts = [r for r in fake.requests if not r.get("page_token")]
    assert [(r["symbols"], r["start"][:10]) for r in firsts] == [("AAPL", "2024-11-01")]  # one run, Nov 4 included
    assert set(Catalog(tmp_path).origins("AAPL").values()) == {"alpaca"}
    want = generate_panel("2024-11-01", "2024-11-05", ("AAPL",)).bars("AAPL").loc["2024-11-04", "close"].to_numpy()
    np.testing.assert_allclose(cat.read_panel(["AAPL"], "2024-11-04", "2024-11-04").close[:, 0], want)
