"""The user-facing Strategy API: subclass the score model, get clear errors for a bad one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data.sample import generate_panel
from strategies.params import Params
from strategies.tiered_basket import TieredBasketStrategy
from tierlab.errors import ConfigError, DataError


class AlwaysBullish(TieredBasketStrategy):
    """A user model: every stock scores +0.9 at every bar."""

    def score(self, panel, params=None):
        return np.full(panel.shape, 0.9)


class Broken(TieredBasketStrategy):
    def score(self, panel, params=None):
        out = np.zeros(panel.shape)
        out[5, 0] = 3.0
        return out


@pytest.fixture(scope="module")
def panel():
    return generate_panel("2024-11-04", "2024-11-05")


def test_a_subclassed_score_model_drives_the_rules(panel) -> None:
    res = AlwaysBullish().run(panel)
    names = res.reason_table().iloc[0]
    assert names["actionable"] > 0 and names["evidence"] == 0
    assert set(res.orders_frame()["side"]) >= {"buy"}
    # missing bars never get a score, whatever the model says
    assert np.isnan(res.scores[~panel.select(res.symbols).has_bar]).all()


def test_a_score_outside_the_range_is_refused_naming_symbol_and_time(panel) -> None:
    with pytest.raises(ConfigError, match=r"Broken.score: NVDA at 2024-11-04 14:35:00\+00:00 scored 3.0"):
        Broken().run(panel)


def test_a_panel_missing_a_universe_symbol_is_refused(panel) -> None:
    with pytest.raises(DataError, match="panel lacks universe symbol"):
        TieredBasketStrategy().run(panel.select(["NVDA", "TSLA"]))


def test_parameter_sets_must_share_the_universe(panel) -> None:
    p = Params.preset()
    with pytest.raises(ConfigError, match="every set must share tier_a"):
        TieredBasketStrategy().run(panel, [p, p.replace(tier_a=("NVDA", "TSLA"), tier_bench=("GOOGL", "AMD", "AVGO", "AAPL"))])


def test_pending_orders_become_idempotent_broker_intents(panel) -> None:
    """What the live runner sends after a bar is exactly what the history driver fills next bar."""
    strat = TieredBasketStrategy()
    inputs = strat.prepare(panel)
    full = strat.run_inputs(inputs).orders
    state = strat.new_state()
    seen = 0
    for t in range(len(inputs.index) - 1):
        strat.walk(inputs, state, t, t + 1)
        intents = strat.intents(state)
        decided_now = full[(full["decision_bar"] == t) & (full["reason"] != 3) & (full["reason"] != 4)]
        want = sorted((inputs.symbols[o["col"]], "buy" if o["side"] > 0 else "sell", float(o["qty"])) for o in decided_now
                      if o["bar"] == t + 1)
        got = sorted((i.symbol, i.side, i.qty) for i in intents if i.bar_time == inputs.index[t] + pd.Timedelta(minutes=1))
        assert set(want) <= set(got)
        for i in intents:
            assert i.client_order_id == strat.intents(state)[intents.index(i)].client_order_id
            if i.side == "buy":
                assert i.stop_loss < i.take_profit
        seen += len(want)
    assert seen > 10
