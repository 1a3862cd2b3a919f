"""Walk-forward splits over trading sessions: rolling (or anchored) train windows, a purge gap, a test window.

Folds are counted in sessions (New York trading days), never in bars, so a test window always starts
at a session open. The `purge` sessions between a train window and its test window are in neither:
with intraday strategies one session is enough to keep a position, a rolling statistic or a
cool-down started in training from reaching the scored test bars.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import pandas as pd

from data.bars import Panel
from tierlab.errors import ConfigError


class Fold(NamedTuple):
    """One split: `train` and `test` are ranges of session numbers (0 = first session of the data)."""

    number: int
    train: range
    test: range

    @property
    def purge(self) -> range:
        """The sessions skipped between training and testing."""
        return range(self.train.stop, self.test.start)


def walk_forward(
    n_sessions: int,
    train: int,
    test: int,
    purge: int = 1,
    step: int | None = None,
    anchored: bool = False,
) -> Iterator[Fold]:
    """Yield folds over `n_sessions` sessions: `train` sessions, `purge` skipped, then `test` sessions.

    Each next fold moves forward by `step` sessions (default `test`, so test windows tile without
    overlap). `anchored=True` keeps every train window starting at session 0 (expanding window).
    Raises ConfigError naming the parameter when a size is invalid or not even one fold fits.
    """
    step = test if step is None else step
    for name, value, low in (("train", train, 1), ("test", test, 1), ("purge", purge, 0), ("step", step, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"walk-forward {name} must be an integer >= {low} sessions, got {value!r}")
    if train + purge + test > n_sessions:
        raise ConfigError(
            f"walk-forward needs train + purge + test = {train}+{purge}+{test} = {train + purge + test} "
            f"sessions, but the data has only {n_sessions}"
        )
    k, start = 0, 0
    while start + train + purge + test <= n_sessions:
        lo = 0 if anchored else start
        tr = range(lo, start + train)
        te = range(start + train + purge, start + train + purge + test)
        yield Fold(k, tr, te)
        k += 1
        start += step


def study_plan(
    n_sessions: int, train: int, test: int, purge: int = 1, holdout: int = 0
) -> tuple[list[Fold], range | None]:
    """Folds over the searched sessions and the holdout after them: the last `holdout` sessions, then a purge.

    The optimizer sees sessions 0 .. n - holdout - purge - 1 only; `purge` sessions separate the last
    of them from the holdout (as between each train and test window), so nothing it saw runs into
    the holdout. Without a holdout (0) every session is searched and the second value is None.
    """
    if holdout < 0:
        raise ConfigError(f"holdout must be >= 0 sessions, got {holdout}")
    searched = n_sessions - (holdout + purge if holdout else 0)
    try:
        folds = list(walk_forward(searched, train, test, purge))
    except ConfigError as exc:
        if not holdout:
            raise
        raise ConfigError(f"{exc} after the {holdout} holdout and {purge} purge sessions "
                          f"(of {n_sessions})") from None
    return folds, (range(n_sessions - holdout, n_sessions) if holdout else None)


def count_folds(n_sessions: int, train: int, test: int, purge: int = 1, step: int | None = None) -> int:
    """How many folds `walk_forward` yields for these sizes (0 when none fits)."""
    step = test if step is None else step
    span = train + purge + test
    return 0 if span > n_sessions or step < 1 else (n_sessions - span) // step + 1


def session_numbers(index: pd.DatetimeIndex) -> np.ndarray:
    """Session number (0, 1, ...) of each bar of `index`, from the exchange calendar's session dates."""
    from data.calendar import session_info  # the one definition of "which session is this bar in"

    day = np.asarray(session_info(index).day)
    if len(day) and np.any(np.diff(day) < 0):
        raise ConfigError("bar index must be sorted in time for walk-forward splits")
    _, numbers = np.unique(day, return_inverse=True)
    return numbers.astype(np.int64)


def bar_slices(numbers: np.ndarray, fold: Fold) -> tuple[slice, slice]:
    """Bar slices (train, test) of a fold, given each bar's session number from `session_numbers`."""
    return _bars(numbers, fold.train), _bars(numbers, fold.test)


def _bars(numbers: np.ndarray, sessions: range) -> slice:
    lo = int(np.searchsorted(numbers, sessions.start, side="left"))
    hi = int(np.searchsorted(numbers, sessions.stop, side="left"))
    return slice(lo, hi)


def window_panel(panel: Panel, numbers: np.ndarray, sessions: range) -> Panel:
    """The part of `panel` whose bars fall in `sessions` (session numbers from `session_numbers`)."""
    bars = _bars(numbers, sessions)
    if bars.start >= bars.stop:
        raise ConfigError(f"sessions {sessions.start}..{sessions.stop - 1} hold no bars of this panel")
    end = panel.index[bars.stop] if bars.stop < len(panel.index) else None
    return panel.slice(panel.index[bars.start], end)
