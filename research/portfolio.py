"""Replay a RunResult's fills into a vectorbt Portfolio (the report's accounting, stats and plots).

vectorbt fills at the same bar's close by default (a look-ahead trap, vectorbt issue 190), so the
fills are passed explicitly: size (signed shares), price (the strategy's fill price, slippage
included) and fixed fees per order, at the strategy's fill bar. vectorbt only does the bookkeeping.

vectorbt takes one order per (row, column). When a strategy fills two orders for one symbol in
one bar (an entry at the open stopped out inside the same bar), that bar is repeated as extra
rows 1 ns apart; `bar_rows` maps each original bar to its last row so values line up with the
RunResult again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from strategies.base import RunResult

if TYPE_CHECKING:
    import vectorbt as vbt


@dataclass(eq=False)
class Replay:
    """A vectorbt Portfolio (one group per parameter set) and the row of each original bar."""

    portfolio: vbt.Portfolio
    bar_rows: np.ndarray  # (T,) last portfolio row of each original bar
    sets: tuple[int, ...]
    index: pd.DatetimeIndex  # the original bars

    def value(self) -> pd.DataFrame:
        """Portfolio value per set (columns) at each original bar's close."""
        return self._at_bars(self.portfolio.value())

    def cash(self) -> pd.DataFrame:
        """Cash per set at each original bar's close."""
        return self._at_bars(self.portfolio.cash())

    def _at_bars(self, df: pd.DataFrame | pd.Series) -> pd.DataFrame:
        arr = np.asarray(df).reshape(len(df), -1)[self.bar_rows]
        return pd.DataFrame(arr, index=self.index, columns=list(self.sets))


def replay(result: RunResult, close: np.ndarray, sets: list[int] | None = None, *, freq: str = "1min") -> Replay:
    """Build a vectorbt Portfolio from `result.orders` for `sets` (default all), cash shared per set.

    `close` is the panel's (T, N) close; it is forward-filled for valuation only, as the rules'
    own equity marks a symbol without a bar at its last known close.
    """
    import vectorbt as vbt  # 3.6 s to import: only where a Portfolio is built, never for --help

    sets = list(range(result.n_sets)) if sets is None else list(sets)
    T, N = close.shape
    o = result.orders[np.isin(result.orders["set"], sets)]
    # rank of each order among the orders with the same (set, bar, col), in fill order
    key = (o["set"].astype(np.int64) * (T + 1) + o["bar"]) * (N + 1) + o["col"]
    order = np.argsort(key, kind="stable")
    ks = key[order]
    first = np.r_[True, ks[1:] != ks[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(ks)), 0))
    rank = np.empty(len(o), dtype=np.int64)
    rank[order] = np.arange(len(ks)) - start
    mult = np.ones(T, dtype=np.int64)
    if len(o):
        np.maximum.at(mult, o["bar"], rank + 1)
    first_row = np.r_[0, np.cumsum(mult)[:-1]]
    n_rows = int(mult.sum())
    rows_bar = np.repeat(np.arange(T), mult)
    offset = np.arange(n_rows) - first_row[rows_bar]
    index = result.index.as_unit("ns")[rows_bar] + pd.to_timedelta(offset, unit="ns")

    set_pos = {s: i for i, s in enumerate(sets)}
    cols = np.array([set_pos[int(s)] for s in o["set"]], dtype=np.int64) * N + o["col"]
    size = np.full((n_rows, len(sets) * N), np.nan)
    price = np.full_like(size, np.nan)
    fees = np.zeros_like(size)
    r = first_row[o["bar"]] + rank
    size[r, cols] = o["side"] * o["qty"]
    price[r, cols] = o["price"]
    fees[r, cols] = o["fees"]
    filled = pd.DataFrame(close).ffill().bfill().to_numpy()[rows_bar]
    columns = pd.MultiIndex.from_product([sets, list(result.symbols)], names=["set", "symbol"])
    pf = vbt.Portfolio.from_orders(
        close=pd.DataFrame(np.tile(filled, (1, len(sets))), index=index, columns=columns),
        size=size,
        size_type="amount",
        direction="both",
        price=price,
        fees=0.0,
        fixed_fees=fees,
        slippage=0.0,
        init_cash=result.init_cash,
        cash_sharing=True,
        group_by="set",
        call_seq="auto",
        allow_partial=False,
        raise_reject=True,
        freq=freq,
    )
    return Replay(portfolio=pf, bar_rows=first_row + mult - 1, sets=tuple(sets), index=result.index)
