"""Bar feeds for the live runner: one session's bars on the XNYS grid, the history API, the clocks.

A bar is labelled by its start (UTC, SPEC §0). `SessionBars` files every bar by its time (so late
or out-of-order bars land in their own minute), `History` fetches closed minutes from Alpaca's
`/v2/stocks/bars` (or the sim's) through alpaca-py, and the feeds say when a minute has closed:
`SimStepFeed` drives the sim's step-mode clock, `AlpacaBarFeed` listens to `StockDataStream` and
closes a minute when every symbol has reported or a grace period after its end has passed.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from data.bars import Panel
from data.calendar import session_info, session_minutes
from strategies.tiered_basket import ny_minute_of_day
from tierlab.errors import ConfigError, DataError
from tierlab.log import get_logger

log = get_logger(__name__)
MINUTE_NS = 60_000_000_000


@dataclass(frozen=True)
class Bar:
    """One closed minute bar of one symbol (t = bar start, tz-aware UTC)."""

    symbol: str
    t: pd.Timestamp
    open: float
    high: float
    low: float
    close: float
    volume: float

    @property
    def epoch(self) -> int:
        """Bar start in epoch seconds."""
        return int(self.t.value // 1_000_000_000)


class SessionBars:
    """One New York session's bars as (T_day, N) arrays on the session's minute grid, filled by bar time."""

    def __init__(self, symbols: Sequence[str], day: dt.date) -> None:
        self.symbols = tuple(symbols)
        self.day = day
        self.col = {s: j for j, s in enumerate(self.symbols)}
        self.index = session_minutes(day, day)
        if len(self.index) == 0:
            raise DataError(f"{day} is not an XNYS session")
        info = session_info(self.index)
        self.close_epoch = np.ascontiguousarray(info.close_epoch)
        self.day_ord = np.ascontiguousarray(info.day)
        self.mtc = np.ascontiguousarray(info.minutes_to_close)
        self.open_epoch = self.index.as_unit("s").asi8.astype(np.int64)
        self.ny_minute = ny_minute_of_day(self.close_epoch)  # the session rules' decision clock
        self._start_epoch = int(self.index[0].value // 1_000_000_000)
        self.times = list(self.index)  # per-bar Timestamps and their text, made once per session
        self.iso = [t.isoformat() for t in self.times]
        shape = (len(self.index), len(self.symbols))
        self.open, self.high, self.low, self.close, self.volume = (np.full(shape, np.nan) for _ in range(5))

    def row(self, t: pd.Timestamp | int) -> int | None:
        """Grid row of a bar start (Timestamp or epoch seconds), or None when off this session's grid."""
        e = int(t.value // 1_000_000_000) if isinstance(t, pd.Timestamp) else int(t)
        r, rem = divmod(e - self._start_epoch, 60)
        return r if rem == 0 and 0 <= r < len(self.index) else None

    def add(self, bar: Bar) -> int | None:
        """File a bar in its minute; returns its row, or None (logged) for a bar off the grid or symbol."""
        j = self.col.get(bar.symbol)
        r = self.row(bar.t)
        if j is None or r is None:
            log.warning("bar_ignored", ticker=bar.symbol, time=str(bar.t), reason="off_session_or_universe")
            return None
        self.open[r, j], self.high[r, j], self.low[r, j] = bar.open, bar.high, bar.low
        self.close[r, j], self.volume[r, j] = bar.close, bar.volume
        return r

    def has(self, r: int) -> np.ndarray:
        """(N,) True where a bar exists at row r."""
        return ~np.isnan(self.close[r])

    def panel(self, lo: int, hi: int) -> Panel:
        """Rows [lo, hi] (inclusive) as a Panel (views, no copies)."""
        return Panel(index=self.index[lo:hi + 1], symbols=self.symbols, open=self.open[lo:hi + 1],
                     high=self.high[lo:hi + 1], low=self.low[lo:hi + 1], close=self.close[lo:hi + 1],
                     volume=self.volume[lo:hi + 1])

    def window_start(self, r: int, cols: np.ndarray, lookback: int | None) -> int:
        """First row of the shortest window ending at r that holds `lookback` real bars of every column in `cols`.

        None means the whole session so far (row 0).
        """
        if lookback is None or r < lookback:
            return 0
        lo = r
        has = ~np.isnan(self.close[: r + 1][:, cols])
        for k in range(has.shape[1]):
            rows = np.flatnonzero(has[:, k])
            if len(rows) < lookback:
                return 0
            lo = min(lo, int(rows[-lookback]))
        return lo


def _client_bars(resp: Any) -> list[Bar]:
    out = []
    for sym, rows in (resp.data or {}).items():
        for b in rows:
            t = pd.Timestamp(b.timestamp)
            t = t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")
            out.append(Bar(sym, t, float(b.open), float(b.high), float(b.low), float(b.close), float(b.volume)))
    return out


class History:
    """Closed 1-minute bars from the history API (Alpaca data, or the sim at `url`), through alpaca-py."""

    def __init__(self, api_key: str, secret_key: str, url: str | None = None, feed: str | None = None) -> None:
        from alpaca.data.historical import StockHistoricalDataClient

        self.client = StockHistoricalDataClient(api_key, secret_key, url_override=url)
        self.feed = feed

    def fetch(self, symbols: Sequence[str], start: pd.Timestamp, end: pd.Timestamp) -> list[Bar]:
        """Bars with start <= t <= end (bar starts), every page."""
        from alpaca.data.requests import StockBarsRequest
        from alpaca.data.timeframe import TimeFrame

        kw: dict[str, Any] = {"feed": self.feed} if self.feed else {}
        req = StockBarsRequest(symbol_or_symbols=list(symbols), timeframe=TimeFrame.Minute,
                               start=start.to_pydatetime(), end=end.to_pydatetime(), limit=10_000, **kw)
        return _client_bars(self.client.get_stock_bars(req))


class SimStepFeed:
    """The sim's step-mode clock over HTTP: each `advance()` closes one bar (or opens a session)."""

    def __init__(self, url: str, api_key: str, secret_key: str, timeout_s: float = 30.0) -> None:
        import requests

        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers.update({"APCA-API-KEY-ID": api_key, "APCA-API-SECRET-KEY": secret_key})
        self.timeout_s = timeout_s

    def state(self) -> dict[str, Any]:
        """The sim's replay position: {bar, bars, time, is_open, done, ...}."""
        r = self.session.get(f"{self.url}/sim/state", timeout=self.timeout_s)
        r.raise_for_status()
        return r.json()

    def advance(self) -> tuple[pd.Timestamp | None, bool]:
        """Step the clock once: (start of the bar that closed, or None, done)."""
        r = self.session.post(f"{self.url}/sim/step", params={"n": 1}, timeout=self.timeout_s)
        r.raise_for_status()
        step = r.json()["steps"][-1] if r.json()["steps"] else {"bar": None, "done": True, "time": None}
        if step["bar"] is None:
            return None, bool(step["done"])
        closed = pd.Timestamp(step["time"]).tz_convert("UTC") - pd.Timedelta(minutes=1)
        return closed, bool(step["done"])

    def now(self) -> pd.Timestamp:
        """The sim's clock."""
        return pd.Timestamp(self.state()["time"]).tz_convert("UTC")


class AlpacaBarFeed:
    """Alpaca's live minute bars (StockDataStream) on a background thread, queued for the runner.

    `closed_minutes()` yields a minute once every symbol has sent its bar or `grace_s` after the
    minute's end has passed (thin symbols often have no bar: the minute is decided without them).
    """

    def __init__(self, api_key: str, secret_key: str, symbols: Sequence[str], *, url: str | None = None,
                 feed: str = "iex", grace_s: float = 3.0) -> None:
        from alpaca.data.enums import DataFeed
        from alpaca.data.live import StockDataStream

        if grace_s < 0:
            raise ConfigError(f"grace_s must be >= 0, got {grace_s}")
        self.symbols = tuple(symbols)
        self.grace_s = grace_s
        self.q: queue.Queue[Bar] = queue.Queue()
        self.reconnects = 0
        self.stream = StockDataStream(api_key, secret_key, feed=DataFeed(feed), url_override=url)
        self.stream.subscribe_bars(self._on_bar, *self.symbols)
        self._thread: threading.Thread | None = None

    async def _on_bar(self, b: Any) -> None:
        t = pd.Timestamp(b.timestamp)
        t = t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")
        self.q.put(Bar(b.symbol, t, float(b.open), float(b.high), float(b.low), float(b.close), float(b.volume)))

    def start(self) -> AlpacaBarFeed:
        """Run the websocket on a daemon thread (alpaca-py reconnects by itself)."""
        self._thread = threading.Thread(target=self.stream.run, name="tierlab-bars", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the websocket."""
        try:
            self.stream.stop()
        except Exception as e:  # closing a stream that never connected is not an error worth raising
            log.warning("bar_stream_stop_failed", reason=type(e).__name__)

    def poll(self, timeout_s: float) -> list[Bar]:
        """Bars that arrived within `timeout_s` (at least one wait, then whatever is queued)."""
        out = []
        try:
            out.append(self.q.get(timeout=timeout_s))
            while True:
                out.append(self.q.get_nowait())
        except queue.Empty:
            pass
        return out

    def due(self, minute_start: pd.Timestamp) -> bool:
        """True once the grace period after the minute's end has passed (wall clock)."""
        return time.time() >= minute_start.timestamp() + 60.0 + self.grace_s
