"""The step kernel interpreted by CPython (NUMBA_DISABLE_JIT=1) decides exactly what the compiled
history loop decides: the rules are plain Python semantics, numba only makes them fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from test_rules_properties import _strategy, random_inputs

CASES = [
    (3, {"mode": "default", "cutoff": 0.35, "cooldown_s": 60.0, "direction_lock_s": 120.0, "max_positions": 3,
         "cap_a": 3, "cap_b": 2, "global_daily_cap": 6, "risk_per_trade": 0.02, "exposure_cap": 0.8, "tokens_b": 3,
         "conflicts": [["QQQ", "SQQQ"]]}),
    (11, {"mode": "relaxed", "cutoff": 0.2, "cooldown_s": 0.0, "direction_lock_s": 0.0, "max_positions": 5,
          "cap_a": 4, "cap_b": 3, "global_daily_cap": 8, "risk_per_trade": 0.05, "exposure_cap": 1.0, "tokens_b": 1,
          "conflicts": [["QQQ", "SQQQ"], ["SQQQ", "SOXS"]]}),
]

SCRIPT = """
import json, sys
import numpy as np
from numba import config
assert config.DISABLE_JIT, "the peer must run interpreted"
sys.path.insert(0, {tests!r})
from test_rules_properties import _strategy, random_inputs
out = {{}}
for seed, values in json.loads({cases!r}):
    values["conflicts"] = tuple(tuple(p) for p in values["conflicts"])
    strat = _strategy(values)
    log = strat.walk(random_inputs(seed), strat.new_state())
    out[str(seed)] = {{"decisions": log.decisions.tolist(), "orders": log.orders.tolist(), "equity": log.equity.tolist()}}
print(json.dumps(out))
"""


def test_interpreted_step_equals_compiled_loop() -> None:
    tests = str(Path(__file__).parent)
    code = SCRIPT.format(tests=tests, cases=json.dumps(CASES))
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    interpreted = json.loads(proc.stdout.strip().splitlines()[-1])
    for seed, values in CASES:
        values = {**values, "conflicts": tuple(tuple(p) for p in values["conflicts"])}
        strat = _strategy(values)
        res = strat.run_inputs(random_inputs(seed))
        got = interpreted[str(seed)]
        np.testing.assert_array_equal(res.decisions[0], np.asarray(got["decisions"], dtype=np.int8))
        assert [tuple(o) for o in res.orders.tolist()] == [tuple(o) for o in got["orders"]]
        np.testing.assert_allclose(res.equity[:, 0], got["equity"], rtol=0, atol=1e-9)
        assert len(res.orders) > 0  # the case trades, so the comparison means something
