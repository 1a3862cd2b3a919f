"""Recorded answers (issue 12.3): `research.llm record`, then the same backtest twice gives identical orders; off = today."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llm_endpoint import serve

from data.catalog import Catalog
from data.sample import ensure_sample
from research.llm import llm_hourly, llm_inputs, llm_kpis, main, parse_policy
from strategies.llm_gate import AnswerBook
from strategies.params import Params
from strategies.tiered_basket import TieredBasketStrategy
from tierlab.errors import ConfigError, DataError

START, END = "2024-11-04", "2024-11-06"


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Any:
    yield from serve(monkeypatch)


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return ensure_sample(Catalog(str(tmp_path / "cat")), START, END)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_record_then_backtest_twice_gives_identical_orders_and_off_equals_today(
        llm: Any, catalog: Catalog, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "answers.jsonl"
    argv = ["record", "--start", START, "--end", END, "--mode", "relaxed", "--out", str(out),
            "--root", str(catalog.root)]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "LLM look-ahead" in said
    recs = _lines(out)
    assert len(recs) == len(llm.seen) > 0  # one recorded line per call
    assert {r["source"] for r in recs} == {"record"} and {r["prompt_version"] for r in recs} == {"review_v1"}
    assert all(r["answer"]["direction"] == "bullish" and r["cost"] > 0 and r["tokens_in"] == 120 for r in recs)
    # recording again asks nothing new: every request is already in the file
    assert main(argv) == 0
    assert len(llm.seen) == len(recs) and len(_lines(out)) == len(recs)

    p = Params.preset("relaxed")
    strat = TieredBasketStrategy(p)
    panel = catalog.read_panel(list(p.universe), START, END)
    events = catalog.read_events(START, END)
    inputs = strat.prepare(panel, events, p)
    runs = []
    for _ in range(2):
        adj, res, policy = llm_inputs(inputs, events, p, f"recorded:{out}")
        assert policy == f"recorded:{out}" and res is not None
        runs.append((strat.run_inputs(adj, [p]), res))
    (r1, g1), (r2, g2) = runs
    assert np.array_equal(r1.orders, r2.orders) and len(r1.orders) > 0
    assert np.array_equal(g1.scores, g2.scores, equal_nan=True) and np.array_equal(g1.calls, g2.calls)
    assert g1.counters["llm_calls"] == len(recs) and g1.counters["llm_error"] == 0
    moved = ~np.isclose(np.nan_to_num(g1.scores), np.nan_to_num(inputs.scores))
    assert moved.sum() == g1.counters["llm_answers"] + g1.counters["llm_cached"] > 0

    k = llm_kpis(g1, f"recorded:{out}")
    assert k["llm_calls"] == len(recs) and k["llm_cache_hits"] == g1.counters["llm_cached"]
    assert k["skipped_llm_below_score"] == g1.counters["llm_below_score"] > 0 and "look-ahead" in k["llm_note"]
    assert k["llm_cost"] == pytest.approx(sum(x["cost"] for x in recs))
    hourly = llm_hourly(g1, inputs.index)
    assert hourly.sum() == len(recs) and hourly.index.tz is not None
    assert llm_kpis(None, "off")["llm_calls"] == 0 and llm_hourly(None, inputs.index).sum() == 0

    off_inputs, off_res, off_policy = llm_inputs(inputs, events, p, "off")
    assert off_res is None and off_policy == "off" and off_inputs is inputs
    today = strat.run(panel, [p], events=events)
    assert np.array_equal(strat.run_inputs(off_inputs, [p]).orders, today.orders)


def test_unrecorded_request_is_an_error_that_changes_nothing(llm: Any, catalog: Catalog, tmp_path: Path) -> None:
    out = tmp_path / "answers.jsonl"
    assert main(["record", "--start", START, "--end", END, "--mode", "relaxed", "--out", str(out),
                 "--root", str(catalog.root)]) == 0
    kept = out.read_text().splitlines()
    out.write_text("\n".join(kept[1:]) + "\n")  # drop the first recorded answer
    p = Params.preset("relaxed")
    strat = TieredBasketStrategy(p)
    events = catalog.read_events(START, END)
    inputs = strat.prepare(catalog.read_panel(list(p.universe), START, END), events, p)
    _, res, _ = llm_inputs(inputs, events, p, f"recorded:{out}")
    assert res is not None and res.counters["llm_error"] == 1
    assert res.counters["llm_answers"] == len(kept) - 1


def test_bad_policy_and_bad_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--llm: expected off or recorded:FILE"):
        parse_policy("sometimes")
    with pytest.raises(ConfigError, match="no such file"):
        parse_policy(f"recorded:{tmp_path / 'nope.jsonl'}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "k"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 1: field at: missing"):
        AnswerBook.load(bad)
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match=r"line 1: not JSON"):
        AnswerBook.load(bad)
