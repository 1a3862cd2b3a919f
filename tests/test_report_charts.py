"""Report charts: session-only time axes (nights, weekends, holidays, half days) and decimated lines."""

from __future__ import annotations

import numpy as np
import pandas as pd

from data.calendar import session_minutes
from research.report import decimate, rangebreaks


def test_rangebreaks_hide_weekends_nights_the_holiday_and_the_half_day_afternoon() -> None:
    index = session_minutes("2024-11-25", "2024-12-03")  # Thanksgiving 11-28 closed, 11-29 closes 13:00
    rb = rangebreaks(pd.DatetimeIndex(index))
    assert {"bounds": ["sat", "mon"]} in rb and {"bounds": [16, 9.5], "pattern": "hour"} in rb
    holiday = next(b for b in rb if b.get("values") == ["2024-11-28 09:30"])
    assert holiday["dvalue"] == 6.5 * 3600 * 1000  # the session hours only: no overlap with the nightly break
    half = next(b for b in rb if b.get("values") == ["2024-11-29 13:00"])
    assert half["dvalue"] == 3 * 3600 * 1000


def test_decimation_keeps_the_envelope_in_few_points() -> None:
    rng = np.random.default_rng(0)
    y = np.cumsum(rng.normal(size=100_000))
    y[12_345] = y.max() + 50  # a spike the eye must still see
    keep = decimate(y, 2000)
    assert len(keep) <= 2002 and keep[0] == 0 and keep[-1] == len(y) - 1
    assert 12_345 in keep and np.argmin(y) in keep
    assert list(decimate(y[:500], 2000)) == list(range(500))
