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

from strategies.codes import DECISION_NAMES, ORDER_REASON_NAMES, TRIGGER_NAMES

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


# One session event per row (SPEC §8): a rollback trigger or the hard rollback time. `bar` is the bar
# whose close fired it (a trigger's changes apply from bar + 1; the hard rollback's from `bar` itself),
# `time` that close (epoch seconds). Window figures are over the trailing window, this bar included
# (zeros for the hard rollback); then each session value before and after.
_CHANGED = ("cutoff_delta", "cooldown_s", "direction_lock_s", "llm_min_score", "reserve_fallback")
TRIGGER_DTYPE = np.dtype(
    [("set", np.int32), ("bar", np.int64), ("time", np.int64), ("kind", np.int8), ("window_min", np.float64),
     ("actionable", np.int64), ("flip_flops", np.int64), ("closed", np.int64), ("stop_exits", np.int64),
     ("llm_calls", np.int64), ("overflow_a", np.float64), ("minutes", np.int64)]
    + [(f"{name}_{when}", np.float64) for name in _CHANGED for when in ("before", "after")]
)


def triggers_frame(rows: np.ndarray) -> pd.DataFrame:
    """Session events (TRIGGER_DTYPE rows) as a table: time (UTC) and New York time of the firing
    close, trigger name, the window's figures and rates, and `changed` ("cooldown_s 120 -> 150; ...")."""
    rows = np.asarray(rows, dtype=TRIGGER_DTYPE)
    time = pd.to_datetime(rows["time"], unit="s", utc=True)
    df = pd.DataFrame({
        "set": rows["set"], "time": time, "time_ny": time.tz_convert("America/New_York"), "bar": rows["bar"],
        "trigger": [TRIGGER_NAMES.get(int(k), str(k)) for k in rows["kind"]], "window_min": rows["window_min"],
        "actionable": rows["actionable"], "flip_flops": rows["flip_flops"], "closed": rows["closed"],
        "stop_exits": rows["stop_exits"], "llm_calls": rows["llm_calls"], "overflow_a": rows["overflow_a"],
        "minutes": rows["minutes"],
    })
    with np.errstate(divide="ignore", invalid="ignore"):
        df["stop_out_rate"] = np.where(rows["closed"] > 0, rows["stop_exits"] / np.maximum(rows["closed"], 1), 0.0)
        df["flip_flop_rate"] = np.where(rows["actionable"] > 0,
                                        rows["flip_flops"] / np.maximum(rows["actionable"], 1), 0.0)
    changed = []
    for r in rows:
        parts = [f"{n} {_fmt(n, r[n + '_before'])} -> {_fmt(n, r[n + '_after'])}" for n in _CHANGED
                 if r[n + "_before"] != r[n + "_after"]]
        changed.append("; ".join(parts) if parts else "none")
    df["changed"] = changed
    for name in _CHANGED:
        df[f"{name}_before"] = rows[f"{name}_before"]
        df[f"{name}_after"] = rows[f"{name}_after"]
    return df


def _fmt(name: str, v: float) -> str:
    if name == "reserve_fallback":
        return "on" if v > 0 else "off"
    return f"{v:g}"


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
    triggers:      session events of every set (TRIGGER_DTYPE): rollback triggers, hard rollback
    close_epoch:   (T,) each bar's close, epoch seconds (the token minute is close_epoch // 60)
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
    triggers: np.ndarray | None = None
    close_epoch: np.ndarray | None = None

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

    def triggers_frame(self, set_: int | None = None) -> pd.DataFrame:
        """Rollback triggers and hard rollbacks (SPEC §8) as a table, for one set or all."""
        rows = self.triggers if self.triggers is not None else np.zeros(0, dtype=TRIGGER_DTYPE)
        if set_ is not None:
            rows = rows[rows["set"] == set_]
        return triggers_frame(rows)

    def token_minutes_frame(self, set_: int = 0) -> pd.DataFrame:
        """Token wants, overflows and overflow rate per minute and tier (SPEC §2): the very numbers the
        2 h trigger reads. Needs per-bar recording (record=True) and close_epoch."""
        ex = self.extras
        if "token_wants_bar" not in ex or self.close_epoch is None:
            raise ValueError("per-bar token counts were not recorded; run with record=True")
        wants = np.asarray(ex["token_wants_bar"][set_])
        over = np.asarray(ex["token_overflows_bar"][set_])
        minute = np.asarray(self.close_epoch) // 60
        cols = {f"wants_{t}": wants[:, i] for i, t in enumerate(("a", "b", "reserve"))}
        cols |= {f"overflows_{t}": over[:, i] for i, t in enumerate(("a", "b", "reserve"))}
        df = pd.DataFrame(cols).groupby(minute).sum()
        df.index = pd.to_datetime(df.index.to_numpy() * 60, unit="s", utc=True).rename("minute")
        for t in ("a", "b", "reserve"):
            w = df[f"wants_{t}"].to_numpy()
            df[f"overflow_rate_{t}"] = np.where(w > 0, df[f"overflows_{t}"].to_numpy() / np.maximum(w, 1), np.nan)
        return df

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
