"""Bars, the parquet catalog, the exchange calendar and filing events (`python -m data --help`)."""

import tierlab  # noqa: F401  (pins the numba cache dir before anything imports numba)
