"""Walk-forward splits: no test window ever touches its training window or the purge gap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from research.walkforward import Fold, bar_slices, count_folds, study_plan, walk_forward
from tierlab.errors import ConfigError


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 120),
    train=st.integers(1, 40),
    test=st.integers(1, 20),
    purge=st.integers(0, 5),
    step=st.none() | st.integers(1, 15),
    anchored=st.booleans(),
)
def test_test_windows_never_touch_training_or_purge(
    n: int, train: int, test: int, purge: int, step: int | None, anchored: bool
) -> None:
    if train + purge + test > n:
        with pytest.raises(ConfigError, match="sessions"):
            list(walk_forward(n, train, test, purge, step, anchored))
        return
    folds = list(walk_forward(n, train, test, purge, step, anchored))
    assert len(folds) == count_folds(n, train, test, purge, step) >= 1
    for k, f in enumerate(folds):
        assert f.number == k
        tr, te = set(f.train), set(f.test)
        assert not tr & te
        assert not set(f.purge) & te and not set(f.purge) & tr
        assert len(f.purge) == purge
        assert max(f.train) + purge < min(f.test)  # test starts after train end + purge gap
        assert len(f.test) == test and min(f.train) >= 0 and max(f.test) < n
        assert len(f.train) == (f.train.stop if anchored else train)
    starts = [f.test.start for f in folds]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    if step is None:  # test windows tile: no session is tested twice
        tested = [d for f in folds for d in f.test]
        assert len(tested) == len(set(tested))


def test_a_concrete_rolling_plan() -> None:
    folds = list(walk_forward(20, train=8, test=3, purge=1))
    assert [(f.train, f.test) for f in folds] == [
        (range(0, 8), range(9, 12)),
        (range(3, 11), range(12, 15)),
        (range(6, 14), range(15, 18)),
    ]


@pytest.mark.parametrize(("kw", "name"), [({"train": 0}, "train"), ({"test": 0}, "test"), ({"purge": -1}, "purge"), ({"step": 0}, "step")])
def test_bad_sizes_name_the_parameter(kw: dict, name: str) -> None:
    args = {"train": 5, "test": 2, "purge": 1} | kw
    with pytest.raises(ConfigError, match=name):
        list(walk_forward(30, **args))


def test_bar_slices_cut_at_session_boundaries() -> None:
    numbers = np.repeat(np.arange(6), 4)  # 6 sessions of 4 bars
    tr, te = bar_slices(numbers, Fold(0, range(1, 3), range(4, 6)))
    assert (numbers[tr] == [1, 1, 1, 1, 2, 2, 2, 2]).all()
    assert set(numbers[te]) == {4, 5} and len(numbers[te]) == 8
    assert tr.stop < te.start  # session 3 (the purge) is in neither


def test_session_numbers_follow_the_exchange_calendar() -> None:
    from data.bars import Panel
    from data.calendar import session_minutes
    from research.walkforward import session_numbers, window_panel

    # 2024-11-26 .. 2024-12-02: Thanksgiving (11-28) is closed, 11-29 is a half day (210 bars)
    idx = session_minutes("2024-11-26", "2024-12-02")
    numbers = session_numbers(idx)
    assert numbers[0] == 0 and numbers[-1] == 3
    assert np.bincount(numbers).tolist() == [390, 390, 210, 390]
    nan = np.full((len(idx), 1), np.nan)
    panel = Panel(idx, ("X",), nan, nan, nan, nan, nan)
    w = window_panel(panel, numbers, range(2, 4))
    assert len(w.index) == 600
    assert w.index[0] == pd.Timestamp("2024-11-29 14:30", tz="UTC")  # 09:30 New York


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 90), train=st.integers(1, 30), test=st.integers(1, 12), purge=st.integers(0, 4),
       holdout=st.integers(0, 10))
def test_a_purge_gap_separates_everything_searched_from_the_holdout(
    n: int, train: int, test: int, purge: int, holdout: int
) -> None:
    searched = n - (holdout + purge if holdout else 0)
    if train + purge + test > searched:
        with pytest.raises(ConfigError, match="sessions"):
            study_plan(n, train, test, purge, holdout)
        return
    folds, hold = study_plan(n, train, test, purge, holdout)
    if not holdout:
        assert hold is None and max(folds[-1].test) == n - 1 - (searched - train - purge - test) % test
        return
    assert hold == range(n - holdout, n)  # the last sessions of the data
    seen = [d for f in folds for d in (*f.train, *f.test)]
    assert max(seen) + purge < hold.start  # `purge` sessions nobody sees, then the holdout
    assert max(seen) == searched - 1 - (searched - train - purge - test) % test  # folds use all they may


@pytest.mark.parametrize(("n", "train", "test", "purge", "holdout", "last_seen"),
                         [(32, 10, 5, 1, 5, 25), (21, 4, 2, 1, 3, 16), (29, 6, 3, 2, 4, 22), (12, 3, 1, 0, 2, 9)])
def test_concrete_plans_end_purge_sessions_before_the_holdout(
    n: int, train: int, test: int, purge: int, holdout: int, last_seen: int
) -> None:
    folds, hold = study_plan(n, train, test, purge, holdout)
    assert hold is not None and hold.start == n - holdout
    assert max(max(f.test) for f in folds) == last_seen == hold.start - purge - 1
