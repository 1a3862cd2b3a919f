"""The Strategy base class and `RunResult`, the one output shape both drivers produce.

A strategy has a vectorized, causal `score(panel)` and a `run(panel, params_list)` that walks the
bars with the shared step kernel and the shared fill model. The research backtest only reads a
`RunResult`; it never re-implements a rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from strategies.codes import DECISION_NAMES, ORDER_REASON_NAMES

# One fill per row. `bar` is the fill bar, `decision_bar` the bar whose close decided it (bar > decision_bar
# always: no look-ahead). qty > 0; side +1 buy, -1 sell. price includes slippage; fees are cash.
ORDER_DTYPE = np.dtype(
    [
        ("set", np.int32),
        ("bar", np.int64),
        ("decision_bar", np.int64),
        ("col", np.int32),
        ("side", np.int8),
        ("qty", np.float64),
        ("price", np.float64),
        ("fees", np.float64),
        ("reason", np.int8),
    ]
)


@dataclass(eq=False)
class RunResult:
    """What a strategy run over history returns, for K parameter sets side by side.

    orders:        structured array of ORDER_DTYPE (all sets; `set` says which)
    equity, cash:  (T, K) mark-to-market equity and cash at each bar close
    decisions:     (K, T, N) int8 decision codes, or None when not recorded (large sweeps)
    reason_counts: (K, len(DECISION_NAMES)) int64 totals per decision code
    extras:        named per-set arrays a strategy adds (e.g. token wants/overflows per tier)
    decision_scores: (K, T, N) the score behind a decision where it is not the symbol's own score
                   (an inverse ETF decided by its basket: the basket's mean score), NaN elsewhere
    """

    index: pd.DatetimeIndex
    symbols: tuple[str, ...]
    init_cash: float
    orders: np.ndarray
    equity: np.ndarray
    cash: np.ndarray
    reason_counts: np.ndarray
    decisions: np.ndarray | None = None
    scores: np.ndarray | None = None
    params: Sequence[Any] = ()
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    decision_scores: np.ndarray | None = None

    @property
    def n_sets(self) -> int:
        """Number of parameter sets K."""
        return self.equity.shape[1]

    def orders_frame(self, set_: int | None = None) -> pd.DataFrame:
        """Orders as a tidy DataFrame with times (UTC), symbols and reason names."""
        o = self.orders if set_ is None else self.orders[self.orders["set"] == set_]
        return pd.DataFrame(
            {
                "set": o["set"],
                "time": self.index[o["bar"]],
                "decision_time": self.index[o["decision_bar"]],
                "symbol": np.asarray(self.symbols, dtype=object)[o["col"]],
                "side": np.where(o["side"] > 0, "buy", "sell"),
                "qty": o["qty"],
                "price": o["price"],
                "fees": o["fees"],
                "reason": [ORDER_REASON_NAMES.get(int(r), str(r)) for r in o["reason"]],
            }
        )

    def decisions_frame(self, set_: int = 0) -> pd.DataFrame:
        """Non-trivial decisions of one set as long rows (time, symbol, reason, score).

        An inverse ETF's basket decision carries its basket's mean score.
        """
        if self.decisions is None:
            raise ValueError("decisions were not recorded; run with record=True")
        d = self.decisions[set_]
        t, j = np.nonzero(d)
        out = pd.DataFrame(
            {
                "time": self.index[t],
                "symbol": np.asarray(self.symbols, dtype=object)[j],
                "reason": np.asarray(DECISION_NAMES, dtype=object)[d[t, j]],
            }
        )
        if self.scores is not None or self.decision_scores is not None:
            own = self.scores[t, j] if self.scores is not None else np.full(len(t), np.nan)
            if self.decision_scores is not None:
                ds = self.decision_scores[set_][t, j]
                own = np.where(np.isnan(ds), own, ds)
            out["score"] = own
        return out

    def reason_table(self) -> pd.DataFrame:
        """Decision counts per set (rows) and reason (columns)."""
        return pd.DataFrame(self.reason_counts, columns=list(DECISION_NAMES))


class Strategy:
    """Base class: subclass, set `params_cls`, implement `score` and `run`.

    `score(panel)` must be causal: the value at bar t uses bars <= t only. The live runner calls
    the same method on a rolling window and reads the last row.
    """

    name: ClassVar[str] = "strategy"
    params_cls: ClassVar[type] = object

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.params_cls()

    def score(self, panel: Any) -> np.ndarray:
        """Scores (T, N) in [-1, 1]; NaN where a symbol has no fresh score."""
        raise NotImplementedError(f"{type(self).__name__}.score(panel) must be implemented")

    def run(self, panel: Any, params_list: Sequence[Any] | None = None, **kwargs: Any) -> RunResult:
        """Walk the panel with each parameter set and return orders, equity and decisions."""
        raise NotImplementedError(f"{type(self).__name__}.run(panel, params_list) must be implemented")
