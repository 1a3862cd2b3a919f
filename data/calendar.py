"""The XNYS exchange calendar (exchange-calendars): regular-hours minute grid, holidays, half days, DST.

Bars are labelled by their start (UTC). A session's grid runs from the open to one minute before the
close, so a regular day has 390 bars and a half day (close 13:00 New York) has 210.
"""

from __future__ import annotations

import datetime as dt
import warnings
from contextlib import contextmanager
from functools import lru_cache
from typing import NamedTuple

import exchange_calendars as xcals
import numpy as np
import pandas as pd

from tierlab.errors import DataError

EXCHANGE = "XNYS"
NEW_YORK = "America/New_York"
BAR = pd.Timedelta(minutes=1)
_NS_PER_MIN = 60_000_000_000


class SessionInfo(NamedTuple):
    """Per-bar session facts as (T,) arrays, for kernels that must not touch pandas."""

    day: np.ndarray  # int64: ordinal of the New York session date
    minutes_to_close: np.ndarray  # int64: minutes from this bar's close to the session close
    close_epoch: np.ndarray  # int64: epoch seconds of this bar's close
    is_half_day: np.ndarray  # bool: the session closes early


@contextmanager
def _quiet_library():
    """exchange-calendars 4.13 trips pandas 3.1's Series.values deprecation; the warning is theirs, not ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pd.errors.Pandas4Warning)
        yield


@lru_cache(maxsize=1)
def calendar() -> xcals.ExchangeCalendar:
    """The XNYS calendar (built once per process; exchange-calendars is slow to construct)."""
    with _quiet_library():
        return xcals.get_calendar(EXCHANGE)


def to_date(value: dt.date | pd.Timestamp | str) -> dt.date:
    """A date from a date, an ISO string or a timestamp (tz-aware timestamps are read in New York time)."""
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise DataError(f"not a date: {value!r}") from exc
    if ts.tz is not None:
        ts = ts.tz_convert(NEW_YORK)
    return ts.date()


@lru_cache(maxsize=64)
def _sessions(start: dt.date, end: dt.date) -> pd.DatetimeIndex:
    cal = calendar()
    first, last = cal.first_session.date(), cal.last_session.date()
    if start > last or end < first:
        raise DataError(f"dates {start}..{end} are outside the {EXCHANGE} calendar ({first}..{last})")
    with _quiet_library():
        return cal.sessions_in_range(max(start, first), min(end, last))


def sessions(start: dt.date | pd.Timestamp | str, end: dt.date | pd.Timestamp | str) -> list[dt.date]:
    """The XNYS session dates from `start` to `end`, both inclusive (holidays and weekends skipped)."""
    return [d.date() for d in _sessions(to_date(start), to_date(end))]


@lru_cache(maxsize=64)
def _minutes(start: dt.date, end: dt.date) -> pd.DatetimeIndex:
    s = _sessions(start, end)
    if len(s) == 0:
        return pd.DatetimeIndex([], tz="UTC", name="timestamp")
    with _quiet_library():
        idx = calendar().sessions_minutes(s[0], s[-1])
    return pd.DatetimeIndex(idx, name="timestamp").as_unit("ns")


def session_minutes(start: dt.date | pd.Timestamp | str, end: dt.date | pd.Timestamp | str) -> pd.DatetimeIndex:
    """UTC bar starts of every regular-hours minute of the XNYS sessions from `start` to `end` (dates, inclusive)."""
    return _minutes(to_date(start), to_date(end))


def ny_days(index: pd.DatetimeIndex) -> np.ndarray:
    """New York calendar date of each timestamp as datetime64[D] (the session a bar belongs to)."""
    local = pd.DatetimeIndex(index).tz_convert(NEW_YORK).tz_localize(None)
    return local.to_numpy().astype("datetime64[D]")


def off_session(index: pd.DatetimeIndex) -> np.ndarray:
    """Boolean mask of timestamps that are not the start of a regular-hours XNYS minute."""
    if len(index) == 0:
        return np.zeros(0, dtype=bool)
    days = ny_days(index)
    grid = _minutes(days.min().item(), days.max().item())
    return ~pd.DatetimeIndex(index).as_unit("ns").isin(grid)


def session_info(index: pd.DatetimeIndex) -> SessionInfo:
    """Session facts for each bar of a session grid: day ordinal, minutes to close, close epoch, half day.

    An index inside one session's grid (the live runner's window, every bar) is read from that
    session's facts computed once; anything else is computed from the schedule.
    """
    index = pd.DatetimeIndex(index).as_unit("ns")
    if len(index) == 0:
        z = np.zeros(0, dtype=np.int64)
        return SessionInfo(z, z.copy(), z.copy(), np.zeros(0, dtype=bool))
    a = index.asi8
    whole = _one_session(int(a[0]), int(a[-1]))
    if whole is not None:
        start, info = whole
        off = (a - start) // _NS_PER_MIN
        if ((a - start) % _NS_PER_MIN == 0).all():
            return SessionInfo(*(x[off] for x in info))
    return _session_info(index)


@lru_cache(maxsize=8)
def _grid_info(first_ns: int) -> tuple[int, int, SessionInfo]:
    day = pd.Timestamp(first_ns, tz="UTC").tz_convert(NEW_YORK).date()
    grid = _minutes(day, day)
    if len(grid) == 0:
        return 0, -1, SessionInfo(*(np.zeros(0, dtype=np.int64),) * 3, np.zeros(0, dtype=bool))
    return int(grid.asi8[0]), int(grid.asi8[-1]), _session_info(grid)


def _one_session(first_ns: int, last_ns: int) -> tuple[int, SessionInfo] | None:
    """(grid start, facts) of the session whose grid holds both ends, or None."""
    day_key = first_ns - (first_ns % (86_400 * 1_000_000_000))  # UTC midnight: a session never spans one
    start, end, info = _grid_info(day_key + 12 * 3_600 * 1_000_000_000)
    if end < 0 or not (start <= first_ns <= last_ns <= end):
        return None
    return start, info


def _session_info(index: pd.DatetimeIndex) -> SessionInfo:
    days = ny_days(index)
    uniq, inv = np.unique(days, return_inverse=True)
    sched = calendar().schedule.loc[pd.DatetimeIndex(uniq)]
    closes = pd.DatetimeIndex(sched["close"]).as_unit("ns").asi8
    opens = pd.DatetimeIndex(sched["open"]).as_unit("ns").asi8
    bar_close = index.asi8 + _NS_PER_MIN
    minutes_to_close = (closes[inv] - bar_close) // _NS_PER_MIN
    half = (closes - opens) < 390 * _NS_PER_MIN
    ordinal = uniq.astype("int64") + dt.date(1970, 1, 1).toordinal()
    return SessionInfo(
        day=ordinal[inv].astype(np.int64),
        minutes_to_close=minutes_to_close.astype(np.int64),
        close_epoch=(bar_close // 1_000_000_000).astype(np.int64),
        is_half_day=half[inv],
    )
