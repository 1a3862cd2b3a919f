"""tierlab: shared plumbing (paths, errors, logging) for the data/strategies/research/live packages.

Importing it first pins numba's on-disk cache outside the source tree, so every `@njit(cache=True)`
kernel compiles once per machine instead of once per process.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault(
    "NUMBA_CACHE_DIR", str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tierlab" / "numba")
)

from tierlab.errors import BrokerError, ConfigError, DataError, TierlabError
from tierlab.paths import tierlab_home

__all__ = ["BrokerError", "ConfigError", "DataError", "TierlabError", "tierlab_home"]
