"""Where tierlab keeps its state: `TIERLAB_HOME` or `~/.tierlab` (catalog, studies, caches)."""

from __future__ import annotations

import os
from pathlib import Path


def tierlab_home() -> Path:
    """Return the tierlab home directory (created on demand), honouring `TIERLAB_HOME`."""
    home = Path(os.environ.get("TIERLAB_HOME") or Path.home() / ".tierlab").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home
