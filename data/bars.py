"""The one bar schema and the wide `Panel` (time x symbol) that every vectorized path consumes.

A bar is labelled by its start time, tz-aware UTC (SPEC §0). A panel sits on the exchange's
regular-hours minute grid; a minute without a bar is NaN in every field and is never filled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

BAR_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
OPTIONAL_COLUMNS: tuple[str, ...] = ("vwap", "trade_count")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")


@dataclass(frozen=True, eq=False)
class Panel:
    """Aligned float64 arrays of shape (T, N): `index` is the bar-start grid (UTC), `symbols` the columns.

    Missing bars are NaN in every field. `vwap`/`trade_count` are optional (None when absent).
    """

    index: pd.DatetimeIndex
    symbols: tuple[str, ...]
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    vwap: np.ndarray | None = None
    trade_count: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.index, pd.DatetimeIndex) or self.index.tz is None:
            raise TypeError("Panel.index must be a tz-aware DatetimeIndex")
        if str(self.index.tz) != "UTC":
            object.__setattr__(self, "index", self.index.tz_convert("UTC"))
        if not self.index.is_monotonic_increasing or self.index.has_duplicates:
            raise ValueError("Panel.index must be strictly increasing")
        object.__setattr__(self, "symbols", tuple(self.symbols))
        shape = (len(self.index), len(self.symbols))
        for name in BAR_COLUMNS + OPTIONAL_COLUMNS:
            arr = getattr(self, name)
            if arr is None:
                continue
            arr = np.ascontiguousarray(arr, dtype=np.float64)
            if arr.shape != shape:
                raise ValueError(f"Panel.{name} has shape {arr.shape}, expected {shape}")
            object.__setattr__(self, name, arr)

    @property
    def shape(self) -> tuple[int, int]:
        """(bars, symbols)."""
        return self.close.shape

    @property
    def has_bar(self) -> np.ndarray:
        """Boolean (T, N): True where a real bar exists (close is not NaN)."""
        return ~np.isnan(self.close)

    def field(self, name: str) -> pd.DataFrame:
        """One field as a DataFrame (index x symbols)."""
        arr = getattr(self, name)
        if arr is None:
            raise KeyError(f"panel has no field {name!r}")
        return pd.DataFrame(arr, index=self.index, columns=list(self.symbols))

    def col(self, symbol: str) -> int:
        """Column number of `symbol`; KeyError naming the known symbols otherwise."""
        try:
            return self.symbols.index(symbol)
        except ValueError:
            raise KeyError(f"unknown symbol {symbol!r}; panel has {', '.join(self.symbols)}") from None

    def select(self, symbols: Sequence[str]) -> Panel:
        """A panel with only `symbols`, in that order."""
        cols = [self.col(s) for s in symbols]
        return self._take(slice(None), cols, tuple(symbols))

    def slice(self, start: pd.Timestamp | str | None = None, end: pd.Timestamp | str | None = None) -> Panel:
        """Bars with start <= t < end (either bound optional; naive bounds are read as UTC)."""
        lo = 0 if start is None else int(self.index.searchsorted(_utc(start), side="left"))
        hi = len(self.index) if end is None else int(self.index.searchsorted(_utc(end), side="left"))
        return self._take(slice(lo, hi), slice(None), self.symbols)

    def bars(self, symbol: str) -> pd.DataFrame:
        """The real bars of one symbol in the long schema (missing minutes dropped)."""
        j = self.col(symbol)
        cols = {n: getattr(self, n)[:, j] for n in BAR_COLUMNS + OPTIONAL_COLUMNS if getattr(self, n) is not None}
        df = pd.DataFrame(cols, index=self.index)
        df.index.name = "timestamp"
        return df[~np.isnan(df["close"].to_numpy())]

    def _take(self, rows: slice, cols: slice | list[int], symbols: tuple[str, ...]) -> Panel:
        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[rows][:, cols]

        return Panel(
            index=self.index[rows],
            symbols=symbols,
            **{n: take(getattr(self, n)) for n in BAR_COLUMNS + OPTIONAL_COLUMNS},
            meta=dict(self.meta),
        )

    @classmethod
    def from_frames(cls, frames: dict[str, pd.DataFrame], index: pd.DatetimeIndex | None = None) -> Panel:
        """Build a panel from per-symbol long frames (UTC index of bar starts) on `index`.

        Without `index` the union of the frames' timestamps is used. Bars off the grid are an
        error (never silently dropped).
        """
        if index is None:
            index = pd.DatetimeIndex(sorted(set().union(*[set(f.index) for f in frames.values()])))
            if len(index) and index.tz is None:
                raise TypeError("bar timestamps must be tz-aware UTC")
        index = pd.DatetimeIndex(index).tz_convert("UTC")
        symbols = tuple(frames)
        out: dict[str, np.ndarray | None] = {}
        for name in BAR_COLUMNS + OPTIONAL_COLUMNS:
            present = [name in f.columns for f in frames.values()]
            if name in OPTIONAL_COLUMNS and not all(present):
                out[name] = None
                continue
            out[name] = np.full((len(index), len(symbols)), np.nan)
        for j, (sym, f) in enumerate(frames.items()):
            pos = index.get_indexer(pd.DatetimeIndex(f.index).tz_convert("UTC"))
            if (pos < 0).any():
                bad = f.index[pos < 0][0]
                raise ValueError(f"{sym}: bar at {bad} is not on the panel's session grid")
            for name, arr in out.items():
                if arr is not None:
                    arr[pos, j] = f[name].to_numpy(dtype=np.float64)
        return cls(index=index, symbols=symbols, **out)


def _utc(t: pd.Timestamp | str) -> pd.Timestamp:
    ts = pd.Timestamp(t)
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
