"""`--llm off|recorded:FILE` wired into research.backtest (issue 12.3): CLI, KPIs, report, SPEC §8 threshold."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.catalog import Catalog
from data.sample import ensure_sample
from live.llm import recording
from research.backtest import main as backtest_main
from research.backtest import run_job
from research.llm import LOOKAHEAD_WARNING, record, run_with_llm
from strategies import codes
from strategies.llm_gate import Answer, Request, gate_requests
from strategies.params import Params
from strategies.tiered_basket import TieredBasketStrategy
from tierlab.errors import ConfigError

START, END = "2024-11-04", "2024-11-05"
NY = "America/New_York"


class StubReviewer:
    """Stands in for live.llm.Reviewer in `research.llm.record`: a fixed, priced answer per request."""

    model = "gpt-4o-mini"

    def __init__(self) -> None:
        self.asked = 0

    def ask(self, req: Request, key: str) -> Answer:
        self.asked += 1
        direction = "bearish" if req.score > 0 else "bullish"  # disputes the score: pulls it toward 0
        return Answer(direction, 0.9, "stub", self.model, "review_v1", 120, 20, 3.0e-05)


@pytest.fixture
def catalog() -> Catalog:
    """The home catalog (TIERLAB_HOME is per test) with two sample sessions, as the CLI reads it."""
    return ensure_sample(Catalog(), START, END)


@pytest.fixture
def answers(catalog: Catalog, tmp_path: Path) -> Path:
    out = tmp_path / "answers.jsonl"
    record(START, END, str(out), mode="relaxed", reviewer=StubReviewer())
    assert out.exists() and out.read_text().count("\n") > 0
    return out


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    rc = backtest_main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _orders(stdout: str, name: str = "orders") -> pd.DataFrame:
    report = next(line for line in stdout.splitlines() if line.startswith("report: "))
    return pd.read_parquet(Path(report[len("report: "):]).parent / f"{name}.parquet")


def test_cli_off_is_today_and_recorded_twice_gives_identical_orders(
        catalog: Catalog, answers: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["--mode", "relaxed", "--start", START, "--end", END, "--out", str(tmp_path / "runs")]
    rc, out_off, _ = _run(base, capsys)
    rc2, out_off2, _ = _run([*base, "--llm", "off"], capsys)
    assert rc == rc2 == 0
    p = Params.preset("relaxed")
    today = TieredBasketStrategy(p).run(catalog.read_panel(list(p.universe), START, END), [p],
                                        events=catalog.read_events(START, END)).orders_frame(0)
    off = _orders(out_off)
    assert len(off) > 0
    pd.testing.assert_frame_equal(off.reset_index(drop=True), today.reset_index(drop=True))
    pd.testing.assert_frame_equal(off, _orders(out_off2))

    runs = [_run([*base, "--llm", f"recorded:{answers}"], capsys) for _ in range(2)]
    assert [r[0] for r in runs] == [0, 0]
    first, second = (_orders(r[1]) for r in runs)
    assert len(first) > 0
    pd.testing.assert_frame_equal(first, second)
    pd.testing.assert_frame_equal(_orders(runs[0][1], "decisions"), _orders(runs[1][1], "decisions"))
    # the recorded answers reached the kernel: a decision's score moved against the off run
    dec_on, dec_off = _orders(runs[0][1], "decisions"), _orders(out_off, "decisions")
    both = dec_on.merge(dec_off, on=["time", "symbol"], suffixes=("_on", "_off"))
    assert len(both) and (~np.isclose(both["score_on"], both["score_off"])).sum() >= 1
    text = runs[0][1]
    assert f"LLM gate (SPEC §7): recorded:{answers}" in text and LOOKAHEAD_WARNING in text
    figures = {ln.split()[0]: ln.split()[-1] for ln in text.splitlines() if ln.startswith("  ") and ln.split()}
    assert int(figures["llm_calls"]) >= 1 and int(figures["llm_tokens_in"]) == 120 * int(figures["llm_calls"])
    assert int(figures["skipped_llm_below_score"]) > 0
    assert "LLM gate (SPEC §7): off" in out_off and "look-ahead" not in out_off


def test_kpis_hourly_and_report_say_which_policy_ran(catalog: Catalog, answers: Path, tmp_path: Path) -> None:
    bt, html = run_job("relaxed", START, END, out=str(tmp_path / "runs"), llm=f"recorded:{answers}")
    n_lines = len(answers.read_text().splitlines())
    s = bt.signals
    # every recorded line was asked by `record` at the flat 0.6; the backtest asks a subset (0.7 after 11:30)
    assert 0 < s["llm_calls"] <= n_lines and s["llm_tokens_in"] == 120 * s["llm_calls"]
    assert s["llm_cost"] == pytest.approx(3.0e-05 * s["llm_calls"])
    assert s["skipped_llm_below_score"] > 0 and s["skipped_llm_error"] == 0
    assert s["llm_cache_hits"] == bt.llm["llm_cache_hits"]
    assert bt.hourly["llm_calls"].sum() == s["llm_calls"]  # per NY hour, summing to the total
    asked_hours = {(pd.Timestamp(r["at"]) - pd.Timedelta(minutes=1)).tz_convert(NY).hour  # bar close -> its hour
                   for r in map(json.loads, answers.read_text().splitlines())}
    assert set(bt.hourly.index[bt.hourly["llm_calls"] > 0]) <= asked_hours
    page = html.read_text()
    assert f"recorded answers from {answers}" in page and 'id="llm-lookahead"' in page
    assert "LLM look-ahead: answers recorded after the fact" in page
    assert f"This file: 0 answers recorded live, {n_lines} recorded after the fact (record: {n_lines})." in page

    off, off_html = run_job("relaxed", START, END, out=str(tmp_path / "runs"))
    assert off.signals["llm_calls"] == 0 and off.signals["llm_cost"] == 0 and (off.hourly["llm_calls"] == 0).all()
    page = off_html.read_text()
    assert "off: no LLM review, scores as computed (--llm off)" in page and 'id="llm-lookahead"' not in page


def test_bad_llm_value_or_file_is_one_line_exit_2(catalog: Catalog, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    base = ["--start", START, "--end", END, "--out", str(tmp_path / "runs")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "k"}\n')
    for value, said in (("sometimes", "--llm: expected off or recorded:FILE, got 'sometimes'"),
                        (f"recorded:{tmp_path / 'nope.jsonl'}", "no such file"),
                        (f"recorded:{bad}", "bad.jsonl: line 1: field at: missing")):
        rc, out, err = _run([*base, "--llm", value], capsys)
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and said in err, err
        assert "Traceback" not in err


def test_relaxed_gate_threshold_rises_to_default_at_the_hard_rollback(catalog: Catalog, tmp_path: Path) -> None:
    """Relaxed asks at |score| >= 0.6 until the hard rollback (11:30 NY), then only at >= 0.7 (SPEC §8)."""
    p = Params.preset("relaxed")
    assert (p.llm_min_score, p.hard_rollback_at) == (0.6, "11:30")
    strat = TieredBasketStrategy(p)
    events = catalog.read_events(START, END)
    inp = strat.prepare(catalog.read_panel(list(p.universe), START, END), events, p)
    # a 0.65 event on AMD at 11:00 and 12:00 NY (bar opens) of each session: between relaxed and default
    ny = inp.index.tz_convert(NY)
    j = inp.symbols.index("AMD")
    scores, ev = inp.scores.copy(), np.zeros_like(inp.events)
    picked = np.flatnonzero(np.isin(ny.strftime("%H:%M"), ["11:00", "12:00"]))
    assert len(picked) == 4
    scores[picked, j], ev[picked, j] = 0.65, True
    inp = dataclasses.replace(inp, scores=scores, events=ev)
    path = tmp_path / "answers.jsonl"
    ask = recording(StubReviewer().ask, path, source="record")
    for req in gate_requests(inp.scores, inp.events, inp.close_epoch, inp.day, inp.symbols, inp.index, None):
        ask(req, _key(req))

    out, res, policy = run_with_llm(strat, inp, None, p, f"recorded:{path}")
    assert policy == f"recorded:{path}" and res is not None
    eff = out.extras["llm_min_score"][0]
    hard = out.triggers["bar"][out.triggers["kind"] == codes.TRIGGER_HARD]
    assert list(ny[hard].strftime("%H:%M")) == ["11:29", "11:29"]  # the bar closing at 11:30, each session
    expected = np.full(len(eff), 0.6)
    for d, b in zip(np.unique(inp.day), hard, strict=True):
        expected[(inp.day == d) & (np.arange(len(eff)) >= b)] = 0.7
    assert np.array_equal(eff, expected)  # no other trigger moved it in these sessions
    at11, at12 = picked[ny[picked].hour == 11], picked[ny[picked].hour == 12]
    assert np.all(res.calls[at11] == 1) and np.all(res.calls[at12] == 0)  # asked before 11:30, not after
    assert np.all(res.scores[at11, j] < 0.65) and np.all(res.scores[at12, j] == 0.65)
    assert res.counters["llm_below_score"] == 2 and res.counters["llm_calls"] == 2
    # the kernel traded on the adjusted scores: its decisions at the 11:00 bars saw them
    assert np.array_equal(out.scores[at11, j], res.scores[at11, j])


def _key(req: Request) -> str:
    from strategies.llm_gate import LlmGate, LlmGateConfig

    return LlmGate(LlmGateConfig.for_params(Params.preset("relaxed")), StubReviewer.model).key(req)


def test_tune_trials_run_through_the_gate_and_bad_llm_is_exit_2(
        catalog: Catalog, answers: Path, capsys: pytest.CaptureFixture) -> None:
    from research.backtest import run_grid
    from research.tune import TuneConfig, backtest_problem, study_settings
    from research.tune import main as tune_main

    plan = {"mode": "relaxed", "start": START, "end": END, "train_days": 1, "test_days": 1, "purge_days": 0,
            "holdout_days": 0}
    on = backtest_problem(TuneConfig(**plan, llm=f"recorded:{answers}"))
    off = backtest_problem(TuneConfig(**plan))
    window = range(0, 2)
    a, b, c = on.evaluate(on.base, window), on.evaluate(on.base, window), off.evaluate(off.base, window)
    assert a.metrics["llm_calls"] >= 1 and c.metrics["llm_calls"] == 0  # the trial's windows went through the gate
    assert a.metrics == b.metrics and a.returns.equals(b.returns)  # recorded answers: the same trial twice
    assert study_settings(TuneConfig(**plan, llm=f"recorded:{answers}"), on)["llm"] == f"recorded:{answers}"
    assert "llm" not in study_settings(TuneConfig(**plan), off)  # studies made before --llm resume unchanged

    with pytest.raises(ConfigError, match="runs with --llm off only"):
        run_grid(TieredBasketStrategy(on.base), catalog.read_panel(list(on.base.universe), START, END),
                 [on.base, on.base.replace(cooldown_s=600)], llm=f"recorded:{answers}")
    for value, said in (("sometimes", "--llm: expected off or recorded:FILE"), ("recorded:/no/such.jsonl",
                                                                               "no such file")):
        assert tune_main(["--llm", value, "--trials", "1"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and said in err and "Traceback" not in err
