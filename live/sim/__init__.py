"""A local Alpaca-compatible paper broker: trading REST, bars, trade_updates and market-data streams.

It replays catalog bars on loopback and fills orders with strategies/fills.py, so `alpaca-py`
runs its real code path against it (`url_override`). See server.SimServer and engine.SimEngine.
Names load on first use, so `python -m live.sim --help` answers before numba, pandas and aiohttp load.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "AssetFlags": "assets", "SimConfig": "engine", "SimEngine": "engine", "SimReject": "engine",
    "ManualClock": "ratelimit", "RateLimiter": "ratelimit", "DEFAULT_KEY": "server", "DEFAULT_SECRET": "server",
    "SimServer": "server", "loopback_host": "server", "sim_keys": "server",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines `name` on first use (PEP 562)."""
    if name not in _WHERE:
        raise AttributeError(f"module 'live.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(f"live.sim.{_WHERE[name]}"), name)
