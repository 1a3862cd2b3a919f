"""research.portfolio: the vectorbt replay keeps every fill, even two in one bar for one symbol."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from research.portfolio import replay
from strategies import codes
from strategies.base import ORDER_DTYPE, RunResult

INDEX = pd.date_range("2024-10-21 13:30", periods=6, freq="1min", tz="UTC")


def test_entry_and_stop_in_the_same_bar_are_both_replayed() -> None:
    close = np.array([[100.0, 50.0], [101.0, np.nan], [99.0, 52.0], [98.0, 53.0], [97.0, 54.0], [96.0, 55.0]])
    orders = np.array([
        (0, 1, 0, 0, 1, 9.0, 100.5, 1.0, codes.ORDER_ENTRY),  # buy at bar 1's open ...
        (0, 1, 0, 0, -1, 9.0, 99.0, 1.0, codes.ORDER_STOP),  # ... stopped out inside bar 1
        (0, 2, 1, 1, 1, 10.0, 51.0, 1.0, codes.ORDER_ENTRY),  # BBB has no bar 1: fills at bar 2
        (0, 4, 3, 1, -1, 10.0, 53.5, 1.0, codes.ORDER_EXIT_SIGNAL),
    ], dtype=ORDER_DTYPE)
    # the rules' own books, by hand
    cash = np.array([1000.0, 1000 - 9 * 100.5 - 1 + 9 * 99 - 1, 0, 0, 0, 0])
    cash[2:4] = cash[1] - 10 * 51 - 1
    cash[4:] = cash[3] + 10 * 53.5 - 1
    equity = cash.copy()
    equity[2:4] += 10 * close[2:4, 1]
    run = RunResult(index=INDEX, symbols=("AAA", "BBB"), init_cash=1000.0, orders=orders, equity=equity[:, None],
                    cash=cash[:, None], reason_counts=np.zeros((1, codes.N_DECISIONS), dtype=np.int64))
    rp = replay(run, close)
    assert len(rp.portfolio.wrapper.index) == 7  # bar 1 is repeated for the second fill
    np.testing.assert_allclose(rp.cash().to_numpy()[:, 0], cash, atol=1e-9)
    np.testing.assert_allclose(rp.value().to_numpy()[:, 0], equity, atol=1e-9)
    assert rp.value().index.equals(INDEX)
    recs = rp.portfolio.orders.records_readable
    assert len(recs) == 4 and recs["Fees"].sum() == pytest.approx(4.0)
    assert sorted(recs["Price"].round(4)) == [51.0, 53.5, 99.0, 100.5]
