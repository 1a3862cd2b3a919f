"""The user-facing Strategy API: subclass the score model, get clear errors for a bad one."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from data.sample import generate_panel
from strategies.codes import ORDER_REASON_NAMES, ORDER_STOP, ORDER_TAKE_PROFIT
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


def _expected_id(strategy: str, symbol: str, when: pd.Timestamp, intent: str) -> str:
    """The documented id, rebuilt here: tl-SYMBOL-intent-YYYYmmddHHMM-sha256(strategy|SYMBOL|iso UTC|intent)[:16]."""
    key = f"{strategy}|{symbol}|{when.isoformat()}|{intent}"
    return f"tl-{symbol}-{intent}-{when:%Y%m%d%H%M}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"[:64]


def test_pending_orders_become_idempotent_broker_intents(panel) -> None:
    """What the live runner sends after a bar is exactly what the history driver fills later, id for id."""
    strat = TieredBasketStrategy()
    p = strat.params
    inputs = strat.prepare(panel)
    full = strat.run_inputs(inputs).orders
    market = full[~np.isin(full["reason"], (ORDER_STOP, ORDER_TAKE_PROFIT))]  # resting orders are no intents
    # the last price seen at each bar (a thin ETF without a bar keeps its previous close)
    close = pd.DataFrame(panel.select(inputs.symbols).close).ffill().to_numpy()
    state = strat.new_state()
    seen, ids = 0, set()
    for t in range(len(inputs.index) - 1):
        strat.walk(inputs, state, t, t + 1)
        intents = strat.intents(state)
        # pending after bar t: market orders decided at or before t that the full run fills after t
        pending = market[(market["decision_bar"] <= t) & (market["bar"] > t)]
        want = []
        for o in pending:
            sym = inputs.symbols[o["col"]]
            when = inputs.index[o["decision_bar"]] + pd.Timedelta(minutes=1)  # the decision bar's close
            intent = ORDER_REASON_NAMES[int(o["reason"])]
            side = "buy" if o["side"] > 0 else "sell"
            last = close[o["decision_bar"], o["col"]]
            bracket = ((round(last * (1 - p.stop_loss_pct), 2), round(last * (1 + p.take_profit_pct), 2))
                       if side == "buy" else (None, None))
            want.append((sym, side, float(o["qty"]), when, intent, *bracket,
                         _expected_id(strat.name, sym, when, intent)))
        got = [(i.symbol, i.side, i.qty, i.bar_time, i.intent, i.stop_loss, i.take_profit, i.client_order_id)
               for i in intents]
        assert sorted(got, key=str) == sorted(want, key=str), f"bar {t}"
        assert [i.client_order_id for i in strat.intents(state)] == [g[-1] for g in got]  # asked again: same ids
        ids |= {g[-1] for g in got if g[3] == inputs.index[t] + pd.Timedelta(minutes=1)}
        seen += len(want)
    assert seen > 10
    assert len(ids) == len(market[market["decision_bar"] < len(inputs.index) - 1])  # one id per decision
