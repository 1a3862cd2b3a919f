"""Take the kernel's golden file: the orders and decision counts of `default` and `relaxed` on three
sample sessions, with the very inputs the kernel read (so a later change of the sample generator or
the score model cannot move the reference).

Taken once with the kernel of issue 9 (before the session rules of issue 13); the test
tests/test_rules_golden.py holds the kernel with those rules switched off to it, bit for bit.
Re-taking it is a deliberate act: `python tests/golden/make_golden.py` (from the repo root).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from data.sample import generate_panel  # noqa: E402
from strategies.params import Params  # noqa: E402
from strategies.tiered_basket import TieredBasketStrategy  # noqa: E402

SESSIONS = ("2024-11-04", "2024-11-06")  # Mon..Wed, both ends included: three sessions
MODES = ("default", "relaxed")
INPUTS = HERE / "kernel_inputs.npz"
ORDERS = HERE / "kernel_orders.json"


def main() -> None:
    """Write kernel_inputs.npz and kernel_orders.json next to this script."""
    panel = generate_panel(*SESSIONS)
    inputs = TieredBasketStrategy().prepare(panel)
    np.savez_compressed(
        INPUTS, open=inputs.open, high=inputs.high, low=inputs.low, close=inputs.close, scores=inputs.scores,
        events=inputs.events, close_epoch=inputs.close_epoch, open_epoch=inputs.open_epoch, day=inputs.day,
        minutes_to_close=inputs.minutes_to_close, symbols=np.asarray(inputs.symbols),
    )
    out = {"sessions": list(SESSIONS), "modes": {}}
    for mode in MODES:
        params = Params.preset(mode)
        res = TieredBasketStrategy(params).run_inputs(inputs)
        out["modes"][mode] = {
            "params": json.loads(params.model_dump_json()),
            "orders": [list(o) for o in res.orders.tolist()],
            "order_fields": list(res.orders.dtype.names),
            "reason_counts": res.reason_counts[0].tolist(),
            "final_equity": float(res.equity[-1, 0]),
        }
        print(f"{mode}: {len(res.orders)} orders, final equity {res.equity[-1, 0]:.2f}")
    ORDERS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {INPUTS.name} ({INPUTS.stat().st_size:,} B) and {ORDERS.name} ({ORDERS.stat().st_size:,} B)")


if __name__ == "__main__":
    main()
