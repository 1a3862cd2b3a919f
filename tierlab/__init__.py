"""tierlab: shared plumbing (paths, errors, logging) for the data/strategies/research/live packages.

Importing it first pins numba's on-disk cache outside the source tree, so every `@njit(cache=True)`
kernel compiles once per machine instead of once per process. Numba only notices edits to the file
of the function it caches, not to the kernels that function calls from other modules, so the cache
folder is keyed by a hash of every source file that holds a kernel: an edit anywhere recompiles.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def _numba_cache_dir() -> Path:
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha1()
    for pkg in ("strategies", "research", "live", "data"):
        for f in sorted((root / pkg).rglob("*.py")):
            body = f.read_bytes()
            if b"njit" in body:
                digest.update(f.relative_to(root).as_posix().encode() + b"\0" + body)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tierlab" / "numba"
    return base / digest.hexdigest()[:16]


os.environ.setdefault("NUMBA_CACHE_DIR", str(_numba_cache_dir()))

from tierlab.errors import BrokerError, ConfigError, DataError, TierlabError  # noqa: E402
from tierlab.paths import tierlab_home  # noqa: E402

__all__ = ["BrokerError", "ConfigError", "DataError", "TierlabError", "tierlab_home"]
