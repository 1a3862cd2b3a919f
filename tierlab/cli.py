"""Small helpers every CLI shares (backtest, tune, sim, live): symbol lists by commas or spaces."""

from __future__ import annotations

import re
from collections.abc import Sequence


def split_symbols(raw: str | Sequence[str] | None) -> list[str]:
    """Symbols from `A,B`, `A B`, `A, B` or several arguments, upper-cased, in order, no repeats.

    Use with `nargs="+"` so `--symbols NVDA AMD` and `--symbols NVDA,AMD` both work.
    """
    if raw is None:
        return []
    parts = [raw] if isinstance(raw, str) else list(raw)
    out: list[str] = []
    for part in parts:
        for s in re.split(r"[,\s]+", part):
            if s and s.upper() not in out:
                out.append(s.upper())
    return out
