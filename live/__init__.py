"""The same strategies driven bar by bar: feeds, Redis state, rate limits, broker, paper sim."""

import tierlab  # noqa: F401  (pins the numba cache dir before anything imports numba)
