"""The sim's key pair, apart from live.sim, so the broker adapter can reach the sim without importing it."""

from __future__ import annotations

import os

SIM_DEFAULT_KEY = "tierlab-sim-key"
SIM_DEFAULT_SECRET = "tierlab-sim-secret"


def sim_keys(api_key: str | None = None, secret_key: str | None = None) -> tuple[str, str]:
    """The sim's key pair: explicit values, else SIM_API_KEY/SIM_SECRET_KEY, else the test defaults."""
    return (api_key or os.environ.get("SIM_API_KEY") or SIM_DEFAULT_KEY,
            secret_key or os.environ.get("SIM_SECRET_KEY") or SIM_DEFAULT_SECRET)
