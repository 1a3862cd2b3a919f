"""The user-facing Strategy API: subclass the score model, get clear errors for a bad one."""

from __future__ import annotations

import numpy as np
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
