"""Order intents: what a strategy wants placed, with an idempotent client_order_id.

Pure data (no broker imports): the step kernel's pending orders become intents, and live/broker.py
turns intents into alpaca-py requests. The id is derived from strategy, symbol, decision bar time
and intent, so a retried or re-run decision can never place a second order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from tierlab.errors import ConfigError


def client_order_id(strategy: str, symbol: str, bar_time: pd.Timestamp | datetime | str, intent: str) -> str:
    """Deterministic client_order_id for one decision: the same inputs always give the same id.

    `bar_time` must be tz-aware (the decision bar's time); the id is readable and <= 64 chars.
    """
    t = pd.Timestamp(bar_time)
    if t.tz is None:
        raise ConfigError(f"bar_time must be tz-aware UTC, got naive {t} for {symbol} {intent}")
    key = f"{strategy}|{symbol.upper()}|{t.tz_convert('UTC').isoformat()}|{intent}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"tl-{symbol.upper()}-{intent}-{t.tz_convert('UTC'):%Y%m%d%H%M}-{digest}"[:64]


@dataclass(frozen=True)
class OrderIntent:
    """What the strategy wants placed. `take_profit` and `stop_loss` together make a bracket order."""

    strategy: str
    symbol: str
    side: str
    qty: float
    bar_time: pd.Timestamp
    intent: str = "entry"
    type: str = "market"
    time_in_force: str = "day"
    limit_price: float | None = None
    stop_price: float | None = None
    take_profit: float | None = None
    stop_loss: float | None = None

    def __post_init__(self) -> None:
        if self.side not in ("buy", "sell"):
            raise ConfigError(f"OrderIntent.side must be 'buy' or 'sell', got {self.side!r} ({self.symbol})")
        if not self.qty > 0:
            raise ConfigError(f"OrderIntent.qty must be > 0, got {self.qty!r} ({self.symbol})")
        if self.type not in ("market", "limit", "stop", "stop_limit"):
            raise ConfigError(f"OrderIntent.type {self.type!r} is not market/limit/stop/stop_limit ({self.symbol})")

    @property
    def client_order_id(self) -> str:
        """The idempotency key of this intent."""
        return client_order_id(self.strategy, self.symbol, self.bar_time, self.intent)
