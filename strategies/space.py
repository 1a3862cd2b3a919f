"""Search-space declarations that sit next to the strategy (freqtrade style), optimizer-agnostic.

Grid sweeps and Optuna read the same declarations; only `research/tune.py` imports optuna.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tierlab.errors import ConfigError


@dataclass(frozen=True)
class IntParam:
    """Integers low..high (inclusive) in steps of `step`."""

    low: int
    high: int
    step: int = 1

    def __post_init__(self) -> None:
        if self.low > self.high or self.step <= 0:
            raise ConfigError(f"IntParam space must be low <= high with step > 0, got [{self.low}, {self.high}] step {self.step}")

    def grid(self, n: int | None = None) -> list[int]:
        """Every value, or `n` evenly spread values."""
        vals = list(range(self.low, self.high + 1, self.step))
        return vals if n is None or n >= len(vals) else [vals[int(i)] for i in np.linspace(0, len(vals) - 1, n).round()]


@dataclass(frozen=True)
class FloatParam:
    """Floats in [low, high]; `step` makes it discrete, `log` samples on a log scale."""

    low: float
    high: float
    step: float | None = None
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ConfigError(f"FloatParam space must be low <= high, got [{self.low}, {self.high}]")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ConfigError("FloatParam with log=True needs low > 0 and no step")

    def grid(self, n: int | None = None) -> list[float]:
        """The step grid (or `n` evenly spread values)."""
        if self.step is not None and n is None:
            k = round((self.high - self.low) / self.step)
            return [round(self.low + i * self.step, 10) for i in range(k + 1)]
        n = n or 5
        pts = np.geomspace(self.low, self.high, n) if self.log else np.linspace(self.low, self.high, n)
        return [round(float(x), 10) for x in pts]


@dataclass(frozen=True)
class Choice:
    """One of a fixed list of values."""

    choices: tuple[Any, ...]

    def grid(self, n: int | None = None) -> list[Any]:
        """All choices (n is ignored)."""
        return list(self.choices)


Space = IntParam | FloatParam | Choice


@dataclass(frozen=True)
class Constraint:
    """A cross-field condition a candidate must satisfy; `message` names the fields."""

    check: Callable[[Mapping[str, Any]], bool]
    message: str

    def holds(self, values: Mapping[str, Any]) -> bool:
        """True when the candidate satisfies the condition."""
        return bool(self.check(values))


def expand_grid(
    space: Mapping[str, Space],
    values: Mapping[str, Sequence[Any]] | None = None,
    constraints: Sequence[Constraint] = (),
    n_per_dim: int | None = None,
) -> list[dict[str, Any]]:
    """Cartesian product of explicit `values` (or each space's grid), dropping infeasible points."""
    if values is None:
        values = {k: s.grid(n_per_dim) for k, s in space.items()}
    unknown = [k for k in values if k not in space]
    if unknown:
        raise ConfigError(f"grid names unknown parameter(s) {unknown}; tunable: {sorted(space)}")
    keys = list(values)
    out = []
    for combo in itertools.product(*(values[k] for k in keys)):
        cand = dict(zip(keys, combo, strict=True))
        if all(c.holds(cand) for c in constraints if _applies(c, cand)):
            out.append(cand)
    return out


def _applies(c: Constraint, cand: Mapping[str, Any]) -> bool:
    try:
        c.check(cand)
    except KeyError:
        return False  # the constraint involves a field this grid does not vary
    return True
