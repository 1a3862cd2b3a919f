"""The kernel with the session rules of issue 13 switched off places exactly the orders of the kernel
before them (the golden file of tests/golden/, taken with make_golden.py before the change)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strategies.params import SESSION_RULES_OFF, Params
from strategies.tiered_basket import BarInputs, TieredBasketStrategy

GOLDEN = Path(__file__).parent / "golden"
# the issue-13 rules, off: the delta applies all session, no rollback trigger, no hard rollback
RULES_OFF: dict[str, object] = SESSION_RULES_OFF


def golden_inputs() -> BarInputs:
    """The inputs the golden orders were taken on, exactly as the kernel read them."""
    with np.load(GOLDEN / "kernel_inputs.npz") as z:
        a = {k: z[k] for k in z.files}
    index = pd.DatetimeIndex(pd.to_datetime(a["open_epoch"], unit="s", utc=True))
    return BarInputs(index, tuple(str(s) for s in a["symbols"]), a["open"], a["high"], a["low"], a["close"],
                     a["scores"], a["events"], a["close_epoch"], a["day"], a["minutes_to_close"],
                     open_epoch=a["open_epoch"])


@pytest.mark.parametrize("mode", ["default", "relaxed"])
def test_rules_off_reproduce_the_golden_orders(mode: str) -> None:
    gold = json.loads((GOLDEN / "kernel_orders.json").read_text())["modes"][mode]
    params = Params.build({**gold["params"], **RULES_OFF}, source="golden")
    res = TieredBasketStrategy(params).run_inputs(golden_inputs())
    assert list(res.orders.dtype.names) == gold["order_fields"]
    want = [tuple(o) for o in gold["orders"]]
    got = [tuple(o) for o in res.orders.tolist()]
    assert len(got) == len(want) > 100
    assert got == want  # every field, prices and fees to the last bit
    assert res.reason_counts[0].tolist() == gold["reason_counts"]
    assert float(res.equity[-1, 0]) == gold["final_equity"]


def test_the_default_preset_trades_as_before_with_the_session_rules_on() -> None:
    """Default mode relaxes nothing, so its triggers fire without changing a value: same orders."""
    gold = json.loads((GOLDEN / "kernel_orders.json").read_text())["modes"]["default"]
    params = Params.build(gold["params"], source="golden")
    assert params.rollback_1h and params.rollback_2h and params.delta_window
    res = TieredBasketStrategy(params).run_inputs(golden_inputs())
    assert len(res.triggers) > 0 and set(res.triggers_frame(0)["changed"]) == {"none"}
    assert [tuple(o) for o in res.orders.tolist()] == [tuple(o) for o in gold["orders"]]
