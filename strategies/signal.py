"""Plain signal strategies: vectorized entry/exit arrays walked by a small numba loop.

`SignalStrategy` is the long-only vehicle for cross-checks against other backtesters: a subclass
computes boolean `entries`/`exits` arrays (T, N) from the panel, and `signal_run_nb` turns them
into fills through the shared fill model (strategies/fills.py): a decision at the close of bar t
is a market order filled at the open of the next bar that exists for its symbol, moved by
`slippage`, with per-share and per-order fees. `MACrossStrategy` is the moving-average crossover.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from numba import njit
from tqdm.auto import tqdm

from strategies import codes
from strategies.base import ORDER_DTYPE, RunResult, Strategy
from strategies.codes import ACTIONABLE, EXIT_SIGNAL, IN_POSITION, ORDER_SIGNAL
from strategies.fills import BUY, SELL, market_fill_price_nb, order_fee_nb
from tierlab.errors import ConfigError


@dataclass(frozen=True)
class SignalParams:
    """Parameters of a signal strategy: MA windows (in real bars of each symbol) and costs.

    `size` is a fixed share count per entry; None means all-in: floor(budget / (fill price +
    fee_per_share)) shares after reserving the per-order fee, where the budget is the cash split
    evenly over the symbols not held.
    """

    fast: int = 10
    slow: int = 30
    slippage: float = 0.0
    fee_per_share: float = 0.0
    fee_per_order: float = 0.0
    size: int | None = None

    def __post_init__(self) -> None:
        if self.fast < 1:
            raise ConfigError(f"fast must be >= 1, got {self.fast}")
        if self.slow <= self.fast:
            raise ConfigError(f"slow ({self.slow}) must be greater than fast ({self.fast})")
        for name in ("slippage", "fee_per_share", "fee_per_order"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"size must be None (all-in) or >= 1 share, got {self.size}")

    def replace(self, **changes: Any) -> SignalParams:
        """A validated copy with `changes` applied."""
        return replace(self, **changes)


@njit(cache=True, nogil=True)
def signal_run_nb(
    open_: np.ndarray,
    close: np.ndarray,
    entries: np.ndarray,
    exits: np.ndarray,
    init_cash: float,
    slippage: float,
    fee_per_share: float,
    fee_per_order: float,
    size: float,
    set_id: int,
    record: bool,
):
    """Walk (T, N) bars: fill pending orders at each bar's open, then decide at its close.

    Returns (orders, equity (T,), cash (T,), decisions (T, N) int8 or (0, 0)). `size` <= 0 means
    all-in. An entry is taken only when flat, an exit only when holding; no pyramiding.
    """
    T, N = close.shape
    n_max = 1
    for t in range(T):
        for j in range(N):
            if entries[t, j] or exits[t, j]:
                n_max += 1
    orders = np.empty(n_max, dtype=ORDER_DTYPE)
    n = 0
    equity = np.empty(T)
    cash_out = np.empty(T)
    decisions = np.zeros((T, N) if record else (0, 0), dtype=np.int8)
    pos = np.zeros(N)
    pending = np.zeros(N, dtype=np.int8)  # +1 buy, -1 sell, 0 none
    pending_bar = np.zeros(N, dtype=np.int64)
    last_close = np.full(N, np.nan)
    cash = init_cash
    n_pending = 0
    for t in range(T):
        # 1) fills at this bar's open: sells first so their cash is available to buys
        for pass_side in (SELL, BUY):
            if n_pending == 0:
                break
            n_flat = 0
            for j in range(N):
                if pos[j] == 0.0 and pending[j] != SELL:
                    n_flat += 1
            for j in range(N):
                if pending[j] != pass_side or np.isnan(open_[t, j]):
                    continue
                price = market_fill_price_nb(open_[t, j], pass_side, slippage)
                if pass_side == SELL:
                    qty = pos[j]
                else:
                    if size > 0.0:
                        qty = size
                    else:
                        budget = cash / max(n_flat, 1)
                        qty = np.floor((budget - fee_per_order) / (price + fee_per_share))
                    cost = qty * price + order_fee_nb(qty, fee_per_share, fee_per_order)
                    if qty < 1.0 or cost > cash:
                        pending[j] = 0  # not enough cash: the order is dropped
                        n_pending -= 1
                        continue
                    n_flat -= 1
                fee = order_fee_nb(qty, fee_per_share, fee_per_order)
                cash -= pass_side * qty * price + fee
                pos[j] += pass_side * qty
                o = orders[n]
                o["set"] = set_id
                o["bar"] = t
                o["decision_bar"] = pending_bar[j]
                o["col"] = j
                o["side"] = pass_side
                o["qty"] = qty
                o["price"] = price
                o["fees"] = fee
                o["reason"] = ORDER_SIGNAL
                n += 1
                pending[j] = 0
                n_pending -= 1
        # 2) decisions at this bar's close
        value = 0.0
        for j in range(N):
            c = close[t, j]
            if not np.isnan(c):
                last_close[j] = c
                if pending[j] == 0:
                    if pos[j] == 0.0 and entries[t, j]:
                        pending[j] = BUY
                        n_pending += 1
                        pending_bar[j] = t
                        if record:
                            decisions[t, j] = ACTIONABLE
                    elif pos[j] > 0.0 and exits[t, j]:
                        pending[j] = SELL
                        n_pending += 1
                        pending_bar[j] = t
                        if record:
                            decisions[t, j] = EXIT_SIGNAL
                    elif pos[j] > 0.0 and entries[t, j] and record:
                        decisions[t, j] = IN_POSITION
            if pos[j] != 0.0:
                value += pos[j] * last_close[j]
        equity[t] = cash + value
        cash_out[t] = cash
    return orders[:n], equity, cash_out, decisions


def rolling_mean_real_bars(close: np.ndarray, window: int) -> np.ndarray:
    """Rolling mean of each column over its last `window` real bars (NaN minutes skipped, stay NaN).

    pandas' rolling mean (compensated running sums, C speed) rather than a cumsum difference: the
    latter leaves ~1e-13 noise on exact ties (flat prices), which flips crossover decisions.
    """
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        rows = np.flatnonzero(~np.isnan(close[:, j]))
        if len(rows) >= window:
            out[rows, j] = pd.Series(close[rows, j]).rolling(window).mean().to_numpy()
    return out


@njit(cache=True, nogil=True)
def crossed_above_nb(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """True at a symbol's real bar where a > b and, at its previous real bar, a <= b (NaN bars skipped)."""
    T, N = a.shape
    out = np.zeros((T, N), dtype=np.bool_)
    for j in range(N):
        prev_le = False
        have_prev = False
        for t in range(T):
            x, y = a[t, j], b[t, j]
            if np.isnan(x) or np.isnan(y):
                continue
            if have_prev and prev_le and x > y:
                out[t, j] = True
            prev_le = x <= y
            have_prev = True
    return out


class SignalStrategy(Strategy):
    """Long-only strategy driven by `signals(panel, params) -> (entries, exits)` boolean (T, N).

    Subclasses implement `signals`; `run` walks them with `signal_run_nb` per parameter set.
    """

    name: ClassVar[str] = "signal"
    params_cls: ClassVar[type] = SignalParams

    def signals(self, panel: Any, params: SignalParams) -> tuple[np.ndarray, np.ndarray]:
        """Entries and exits (T, N) bool, causal: the value at bar t uses bars <= t only."""
        raise NotImplementedError(f"{type(self).__name__}.signals(panel, params) must be implemented")

    def prepare(self, panel: Any, params_list: Sequence[SignalParams]) -> None:
        """Precompute what the sets share (called once per `run`, before sets run in threads)."""

    def run(
        self,
        panel: Any,
        params_list: Sequence[SignalParams] | None = None,
        *,
        events: Any = None,
        init_cash: float = 10_000.0,
        record: bool = True,
        progress: bool = False,
    ) -> RunResult:
        """Walk the panel once per parameter set; sets are independent columns of the result."""
        params_list = list(params_list) if params_list is not None else [self.params]
        T = len(panel.index)
        K = len(params_list)
        equity = np.empty((T, K))
        cash = np.empty((T, K))
        counts = np.zeros((K, codes.N_DECISIONS), dtype=np.int64)
        decisions = np.zeros((K, *panel.shape), dtype=np.int8) if record else None
        self.prepare(panel, params_list)

        def one(k: int) -> np.ndarray:
            p = params_list[k]
            ent, ext = self.signals(panel, p)
            o, eq, ca, dec = signal_run_nb(
                panel.open, panel.close, ent, ext, float(init_cash), p.slippage, p.fee_per_share,
                p.fee_per_order, float(p.size or 0), k, record,
            )
            equity[:, k], cash[:, k] = eq, ca
            if record:
                decisions[k] = dec
                counts[k] = np.bincount(dec.ravel(), minlength=codes.N_DECISIONS)
            else:
                counts[k, codes.ACTIONABLE] = int((o["side"] == BUY).sum())
                counts[k, codes.EXIT_SIGNAL] = int((o["side"] == SELL).sum())
            return o

        # the kernels release the GIL: sets run on all cores, results land in their own columns
        with ThreadPoolExecutor(max_workers=min(K, os.cpu_count() or 1)) as pool:
            all_orders = list(tqdm(pool.map(one, range(K)), total=K, disable=not progress, desc=self.name, unit="set"))
        orders = np.concatenate(all_orders) if all_orders else np.empty(0, dtype=ORDER_DTYPE)
        return RunResult(
            index=panel.index, symbols=tuple(panel.symbols), init_cash=float(init_cash), orders=orders,
            equity=equity, cash=cash, reason_counts=counts, decisions=decisions, params=params_list,
        )


class MACrossStrategy(SignalStrategy):
    """Moving-average crossover: buy when the fast MA crosses above the slow MA, sell on the reverse.

    MAs are simple means over each symbol's last `fast`/`slow` real bars. MAs are cached per
    window across the sets of one `run`, so a grid costs one MA per distinct window.
    """

    name: ClassVar[str] = "ma_cross"

    def __init__(self, params: SignalParams | None = None) -> None:
        super().__init__(params)
        self._cache: dict[int, np.ndarray] = {}
        self._cache_close: np.ndarray | None = None

    def prepare(self, panel: Any, params_list: Sequence[SignalParams]) -> None:
        """Compute every distinct MA window of the grid once."""
        for p in params_list:
            self._ma(panel, p.fast)
            self._ma(panel, p.slow)

    def _ma(self, panel: Any, window: int) -> np.ndarray:
        if panel.close is not self._cache_close:
            self._cache, self._cache_close = {}, panel.close
        if window not in self._cache:
            self._cache[window] = rolling_mean_real_bars(panel.close, window)
        return self._cache[window]

    def score(self, panel: Any) -> np.ndarray:
        """Relative MA spread (fast / slow - 1) clipped to [-1, 1]; NaN where not warmed up."""
        fast, slow = self._ma(panel, self.params.fast), self._ma(panel, self.params.slow)
        return np.clip(fast / slow - 1.0, -1.0, 1.0)

    def signals(self, panel: Any, params: SignalParams) -> tuple[np.ndarray, np.ndarray]:
        """Crossovers of the fast over the slow MA (entries) and back under (exits)."""
        fast, slow = self._ma(panel, params.fast), self._ma(panel, params.slow)
        return crossed_above_nb(fast, slow), crossed_above_nb(slow, fast)
