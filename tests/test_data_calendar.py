"""The XNYS grid: regular hours in UTC across DST, holidays skipped, half days short, session facts per bar."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from data.calendar import session_info, session_minutes, sessions


def test_grid_follows_dst_holidays_and_half_days():
    idx = session_minutes("2024-11-01", "2024-11-29")
    days = sessions("2024-11-01", "2024-11-29")
    assert dt.date(2024, 11, 28) not in days and dt.date(2024, 11, 2) not in days  # Thanksgiving, Saturday
    assert len(days) == 20
    assert len(idx) == 19 * 390 + 210  # Nov 29 closes at 13:00 New York
    assert idx[0] == pd.Timestamp("2024-11-01 13:30", tz="UTC")  # 09:30 EDT
    nov4 = idx[idx.normalize() == pd.Timestamp("2024-11-04", tz="UTC")]
    assert nov4[0] == pd.Timestamp("2024-11-04 14:30", tz="UTC") and nov4[-1] == pd.Timestamp("2024-11-04 20:59", tz="UTC")
    assert idx[-1] == pd.Timestamp("2024-11-29 17:59", tz="UTC")  # last bar starts 12:59 EST
    assert idx.is_monotonic_increasing and not idx.has_duplicates


def test_session_info_counts_minutes_to_close_and_marks_half_days():
    idx = session_minutes("2024-11-27", "2024-11-29")
    info = session_info(idx)
    full = idx < pd.Timestamp("2024-11-29", tz="UTC")
    assert info.minutes_to_close[0] == 389 and info.minutes_to_close[389] == 0
    assert info.minutes_to_close[390] == 209 and info.minutes_to_close[-1] == 0
    assert not info.is_half_day[full].any() and info.is_half_day[~full].all()
    assert info.day[0] == dt.date(2024, 11, 27).toordinal() and info.day[-1] == dt.date(2024, 11, 29).toordinal()
    assert info.close_epoch[-1] == int(pd.Timestamp("2024-11-29 18:00", tz="UTC").timestamp())
    assert np.all(np.diff(info.close_epoch) > 0)
