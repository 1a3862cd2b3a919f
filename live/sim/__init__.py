"""A local Alpaca-compatible paper broker: trading REST, bars, trade_updates and market-data streams.

It replays catalog bars on loopback and fills orders with strategies/fills.py, so `alpaca-py`
runs its real code path against it (`url_override`). See server.SimServer and engine.SimEngine.
"""

from live.sim.assets import AssetFlags
from live.sim.engine import SimConfig, SimEngine, SimReject
from live.sim.ratelimit import ManualClock, RateLimiter
from live.sim.server import DEFAULT_KEY, DEFAULT_SECRET, SimServer, loopback_host, sim_keys

__all__ = [
    "DEFAULT_KEY", "DEFAULT_SECRET", "AssetFlags", "ManualClock", "RateLimiter", "SimConfig", "SimEngine", "SimReject",
    "SimServer", "loopback_host", "sim_keys",
]
