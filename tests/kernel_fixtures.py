"""Hand-made kernel inputs: flat prices, chosen scores, events and clocks, for rule tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from strategies import codes as C
from strategies.params import SESSION_RULES_OFF, Params
from strategies.tiered_basket import BarInputs, TieredBasketStrategy

UNIVERSE = Params.preset("default").universe
START = pd.Timestamp("2024-11-04 14:30", tz="UTC")  # 09:30 New York


def make_inputs(
    n_bars: int,
    scores: Iterable[tuple[int, str, float]] = (),
    prices: Mapping[str, float] | None = None,
    bars: Mapping[tuple[int, str], Mapping[str, float]] | None = None,
    events: Iterable[tuple[int, str]] = (),
    step_s: int = 60,
    day: Iterable[int] | None = None,
    minutes_to_close: Iterable[int] | None = None,
    missing: Iterable[tuple[int, str]] = (),
) -> BarInputs:
    """Inputs over UNIVERSE: every symbol flat at its price (default 100) unless `bars` overrides
    one bar's fields; scores NaN except those given; close_epoch every `step_s` seconds."""
    n = len(UNIVERSE)
    col = {s: j for j, s in enumerate(UNIVERSE)}
    base = np.array([(prices or {}).get(s, 100.0) for s in UNIVERSE])
    o, h, lo, c = (np.tile(base, (n_bars, 1)) for _ in range(4))
    for (t, sym), fields in (bars or {}).items():
        for name, v in fields.items():
            {"open": o, "high": h, "low": lo, "close": c}[name][t, col[sym]] = v
    for t, sym in missing:
        for a in (o, h, lo, c):
            a[t, col[sym]] = np.nan
    sc = np.full((n_bars, n), np.nan)
    for t, sym, v in scores:
        sc[t, col[sym]] = v
    ev = np.zeros((n_bars, n), dtype=bool)
    for t, sym in events:
        ev[t, col[sym]] = True
    index = pd.DatetimeIndex([START + pd.Timedelta(seconds=step_s * t) for t in range(n_bars)])
    close_epoch = (index.as_unit("s").asi8 + step_s).astype(np.int64)
    d = np.zeros(n_bars, dtype=np.int64) + 1 if day is None else np.asarray(list(day), dtype=np.int64)
    mtc = np.full(n_bars, 300, dtype=np.int64) if minutes_to_close is None else np.asarray(
        list(minutes_to_close), dtype=np.int64)
    return BarInputs(index, UNIVERSE, o, h, lo, c, sc, ev, close_epoch, d, mtc)


def decision(result_decisions: np.ndarray, t: int, sym: str) -> str:
    """Name of the decision code at bar t for sym."""
    return C.DECISION_NAMES[int(result_decisions[t, UNIVERSE.index(sym)])]


def strategy(**overrides: object) -> TieredBasketStrategy:
    """A strategy on a preset (default unless `mode=`) with `overrides`. The session rules of SPEC §8
    (delta window, rollback triggers, hard rollback) are off unless overridden, so a case about one
    rule of §2-§6 is not moved by a trigger its bars happen to fire."""
    mode = str(overrides.pop("mode", "default"))
    return TieredBasketStrategy(Params.preset(mode).replace(**{**SESSION_RULES_OFF, **overrides}))
