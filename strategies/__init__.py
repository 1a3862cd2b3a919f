"""The trading rules of SPEC.md, written once: params, score model, gate kernel, fill model."""

import tierlab  # noqa: F401  (pins the numba cache dir before anything imports numba)
