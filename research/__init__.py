"""Vectorized evaluation of strategies over history: backtests, KPIs, reports, tuning."""

import tierlab  # noqa: F401  (pins the numba cache dir before anything imports numba)
