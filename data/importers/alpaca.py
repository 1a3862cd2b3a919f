"""Fetch 1-minute bars from Alpaca's historical API (alpaca-py) for the days the catalog is missing.

Keys come from ALPACA_API_KEY / ALPACA_SECRET_KEY; `url` (or TIERLAB_ALPACA_DATA_URL) overrides the
data host, which is how tests point the client at a loopback server. Extended-hours bars are dropped
(the catalog holds regular hours only); everything else goes through the same validation as a file.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence

import pandas as pd
from tqdm import tqdm

from data.calendar import calendar, off_session, sessions
from data.catalog import Catalog, WriteReport, is_synthetic, normalize_symbol
from tierlab.errors import ConfigError, DataError
from tierlab.log import get_logger

MAX_DAYS_PER_REQUEST = 20
_FIELDS = {"o": "open", "h": "high", "l": "low", "c": "close", "v": "volume", "vw": "vwap", "n": "trade_count"}
log = get_logger(__name__)


def make_client(url: str | None = None):  # -> StockHistoricalDataClient (imported lazily: slow import)
    """An alpaca-py StockHistoricalDataClient with keys from the environment; ConfigError if they are missing."""
    from alpaca.data.historical import StockHistoricalDataClient

    key, secret = os.environ.get("ALPACA_API_KEY"), os.environ.get("ALPACA_SECRET_KEY")
    if not key or not secret:
        missing = [n for n, v in (("ALPACA_API_KEY", key), ("ALPACA_SECRET_KEY", secret)) if not v]
        raise ConfigError(f"{' and '.join(missing)} not set: export your Alpaca keys to fetch bars "
                          "(`python -m data sample` needs none)")
    url = url or os.environ.get("TIERLAB_ALPACA_DATA_URL") or None
    return StockHistoricalDataClient(key, secret, raw_data=True, url_override=url.rstrip("/") if url else None)


def missing_runs(have: Sequence[dt.date], start: dt.date | str, end: dt.date | str) -> list[list[dt.date]]:
    """Sessions from `start` to `end` not in `have`, grouped into runs of consecutive sessions (<= 20 each)."""
    held = set(have)
    runs: list[list[dt.date]] = []
    prev_missing = False
    for day in sessions(start, end):
        if day in held:
            prev_missing = False
            continue
        if prev_missing and len(runs[-1]) < MAX_DAYS_PER_REQUEST:
            runs[-1].append(day)
        else:
            runs.append([day])
        prev_missing = True
    return runs


def _frame(raw: list[dict], symbol: str) -> pd.DataFrame:
    if not raw:
        return pd.DataFrame(columns=list(_FIELDS.values()), index=pd.DatetimeIndex([], tz="UTC"))
    df = pd.DataFrame(raw)
    unknown = sorted(set(df.columns) - set(_FIELDS) - {"t"})
    if "t" not in df.columns:
        raise DataError(f"{symbol} (alpaca): bars without a time field 't'")
    df.index = pd.DatetimeIndex(pd.to_datetime(df["t"], utc=True, format="ISO8601"))
    return df.drop(columns=["t", *unknown]).rename(columns=_FIELDS)


def fetch(symbols: Sequence[str], start: dt.date | str, end: dt.date | str, *, catalog: Catalog | None = None,
          url: str | None = None, feed: str = "iex", progress: bool = True, client=None,
          now: pd.Timestamp | None = None) -> list[WriteReport]:
    """Download the missing sessions of `symbols` between `start` and `end` and write them to the catalog.

    A session that has not closed yet (at `now`, default the wall clock) is left out: the catalog
    appends whole days, so a half-fetched day would otherwise never be completed. Days holding the
    synthetic sample are fetched and replaced; symbols are upper-cased.
    """
    from alpaca.data.enums import DataFeed
    from alpaca.data.requests import StockBarsRequest
    from alpaca.data.timeframe import TimeFrame

    catalog = catalog or Catalog()
    symbols = [normalize_symbol(s) for s in symbols]
    if pd.Timestamp(start) > pd.Timestamp(end):
        raise ConfigError(f"empty range: --start {pd.Timestamp(start).date()} is after --end {pd.Timestamp(end).date()}")
    try:
        data_feed = DataFeed(feed)
    except ValueError:
        raise ConfigError(f"feed: unknown Alpaca data feed {feed!r} (use iex or sip)") from None
    end = _last_closed_session(start, end, now)
    if end is None:
        log.info("fetch_nothing_closed", rule="closed_sessions_only", reason="no session in the range has closed yet")
        return [WriteReport(s) for s in symbols]
    # synthetic sample days count as missing: real bars replace them (Catalog.write says so)
    plan = {s: missing_runs([d for d, o in catalog.origins(s).items() if not is_synthetic(o)], start, end)
            for s in symbols}
    todo = sum(len(r) for r in plan.values())
    if todo == 0:
        return [WriteReport(s) for s in symbols]
    client = client or make_client(url)
    cal = calendar()
    reports = []
    with tqdm(total=todo, desc="alpaca bars", unit="req", disable=not progress) as bar:
        for sym, runs in plan.items():
            frames = []
            for run in runs:
                req = StockBarsRequest(symbol_or_symbols=sym, timeframe=TimeFrame.Minute, feed=data_feed,
                                       start=cal.session_open(run[0]).to_pydatetime(),
                                       end=cal.session_close(run[-1]).to_pydatetime())
                try:
                    raw = client.get_stock_bars(req)
                except Exception as exc:  # alpaca-py raises APIError/HTTPError; say which request failed
                    raise DataError(f"{sym} (alpaca): request {run[0]}..{run[-1]} failed: {exc}") from exc
                frames.append(_frame(raw.get(sym, []), sym))
                bar.update(1)
            df = pd.concat(frames) if frames else _frame([], sym)
            outside = off_session(df.index)
            if outside.any():
                log.info("dropped_extended_hours", ticker=sym, rule="rth_only", reason="outside_session",
                         bars=int(outside.sum()))
                df = df[~outside]
            reports.append(catalog.write(sym, df, source="alpaca", origin="alpaca"))
    return reports


def _last_closed_session(start: dt.date | str, end: dt.date | str, now: pd.Timestamp | None) -> dt.date | None:
    """The last session in [start, end] whose close is at or before `now` (None when there is none)."""
    now = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now).tz_convert("UTC")
    cal = calendar()
    wanted = sessions(start, end)
    closed = [d for d in wanted if cal.session_close(pd.Timestamp(d)) <= now]
    if len(closed) < len(wanted):
        log.info("fetch_clamped", rule="closed_sessions_only", reason="session not closed yet",
                 skipped=", ".join(str(d) for d in wanted[len(closed):]))
    return closed[-1] if closed else None


def fetch_cli(symbols: list[str], start: str, end: str, url: str | None, feed: str, root: str | None) -> str:
    """CLI entry (`python -m data fetch`): fetch and summarise one line per symbol."""
    return "\n".join(r.summary() for r in fetch(symbols, start, end, catalog=Catalog(root), url=url, feed=feed))
