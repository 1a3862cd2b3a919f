"""Alpaca's REST rate limit: N requests per window per API key, answered with 429 past it.

A fixed window starts at a key's first request; `X-Ratelimit-Reset` is the epoch second it ends.
The clock is injectable so tests can move through a minute without waiting for it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RateDecision:
    """One request's verdict and the values of the three X-Ratelimit-* headers."""

    allowed: bool
    limit: int
    remaining: int
    reset: int

    def headers(self) -> dict[str, str]:
        """The X-Ratelimit-Limit/Remaining/Reset headers Alpaca sends."""
        return {"X-Ratelimit-Limit": str(self.limit), "X-Ratelimit-Remaining": str(self.remaining),
                "X-Ratelimit-Reset": str(self.reset)}


class RateLimiter:
    """Fixed-window counter per key (default: 200 requests per 60 s, as Alpaca)."""

    def __init__(self, limit: int = 200, window_s: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._windows: dict[str, tuple[float, int]] = {}
        self.rejected = 0

    def hit(self, key: str) -> RateDecision:
        """Count one request for `key` and say whether it may proceed."""
        now = self.clock()
        start, count = self._windows.get(key, (now, 0))
        if now >= start + self.window_s:
            start, count = now, 0
        reset = math.ceil(start + self.window_s)
        if count >= self.limit:
            self._windows[key] = (start, count)
            self.rejected += 1
            return RateDecision(False, self.limit, 0, reset)
        count += 1
        self._windows[key] = (start, count)
        return RateDecision(True, self.limit, self.limit - count, reset)


class ManualClock:
    """A settable clock for tests and step-mode replays: `advance(seconds)` moves it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = float(start)

    def __call__(self) -> float:
        """Current time in epoch seconds."""
        return self.t

    def advance(self, seconds: float) -> None:
        """Move the clock forward (used as a `sleep` replacement in tests)."""
        self.t += max(0.0, float(seconds))
