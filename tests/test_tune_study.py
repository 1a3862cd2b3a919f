"""The study machinery on a small stand-in problem (test-only), so each outcome is known in advance.

The stand-in's fold score peaks at x = 0.3, y = 5; y = 4 is refused by its `replace` (like a
ConfigError from Params.replace), x + y <= 0.5 violates its constraint, y = 0 never trades and
x > 0.9 raises inside the backtest. The real problem (the strategy on the sample) is exercised
in tests/test_tune_cli.py.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest

from research.tune import Problem, TuneConfig, WindowResult, run_study
from research.walkforward import walk_forward
from strategies.space import Constraint, FloatParam, IntParam
from tierlab.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ToyParams:
    x: float = 0.0
    y: int = 1

    def replace(self, **changes: Any) -> ToyParams:
        if changes.get("y") == 4:
            raise ConfigError(f"replace: y = 4 refused (got {changes})")
        return dataclasses.replace(self, **changes)

    def model_dump(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def toy_evaluate(p: ToyParams, sessions: range, sleep: float = 0.0) -> WindowResult:
    if p.x > 0.9:
        raise RuntimeError("stand-in backtest crashed")
    time.sleep(sleep)
    rng = np.random.default_rng(sessions.start)
    days = pd.Index([f"2024-01-{d + 1:02d}" for d in sessions])
    edge = 0.01 * (1 - (p.x - 0.3) ** 2 - 0.02 * (p.y - 5) ** 2)
    rets = pd.Series(edge + 0.002 * rng.normal(size=len(days)), index=days)
    return WindowResult({"sharpe": edge * 100 + 0.001 * sessions.start, "n_trades": 3 * p.y * len(sessions)}, rets)


def toy_problem(cfg: TuneConfig) -> Problem:
    return Problem(
        space={"x": FloatParam(-1.0, 1.0), "y": IntParam(0, 8)},
        constraints=(Constraint(lambda v: v["x"] + v["y"] > 0.5, "x + y > 0.5"),),
        base=ToyParams(),
        folds=list(walk_forward(30, train=10, test=5, purge=1)),
        evaluate=lambda p, f: toy_evaluate(p, f, float(cfg.extra.get("sleep", 0.0))),
    )


def _cfg(tmp_path: Any, name: str = "toy", **kw: Any) -> TuneConfig:
    # a journal file: the same storage semantics as SQLite, several times faster per trial
    return TuneConfig(**({"study": name, "trials": 40, "storage": str(tmp_path / (name + ".journal")),
                          "progress": False, "seed": 3, "min_trades": 1, "startup_trials": 8} | kw))


@pytest.fixture(scope="module")
def toy_study(tmp_path_factory: pytest.TempPathFactory) -> optuna.Study:
    # seed 2: within 40 trials this study meets every outcome the next test names
    return run_study(_cfg(tmp_path_factory.mktemp("toy"), seed=2), toy_problem)


def test_every_outcome_is_recorded_and_the_study_goes_on(toy_study: optuna.Study) -> None:
    trials = toy_study.get_trials(deepcopy=False)
    assert len(trials) == 40
    states = {s: [t for t in trials if t.state == s] for s in optuna.trial.TrialState}
    # a crash inside the backtest: FAILED, and later trials still ran
    crashed = [t for t in trials if t.params.get("x", 0) > 0.9 and "infeasible" not in t.user_attrs]
    assert crashed and all(t.state == optuna.trial.TrialState.FAIL for t in crashed)
    assert min(t.number for t in crashed) < 30  # and ten or more trials ran after it
    assert len(states[optuna.trial.TrialState.COMPLETE]) >= 5
    # infeasible candidates (constraint or ConfigError from replace) are pruned, not crashed
    for t in trials:
        x, y = t.params["x"], t.params["y"]
        if x <= 0.9 and (x + y <= 0.5 or y == 4):
            assert t.state == optuna.trial.TrialState.PRUNED
            assert "infeasible" in t.user_attrs
        if y == 0 and x + y > 0.5 and x <= 0.9:
            assert t.state == optuna.trial.TrialState.PRUNED and "min_trades" in t.user_attrs
    reasons = [t.user_attrs.get("infeasible", "") for t in trials]
    assert any("constraint violated: x + y > 0.5" in r for r in reasons)
    assert any("y = 4 refused" in r for r in reasons)
    # median pruning across folds stops some feasible trials early, saying why
    assert any("pruned" in t.user_attrs and len(t.user_attrs["folds"]) < 3 for t in trials)


def test_best_trial_is_near_the_optimum_with_per_fold_metrics(toy_study: optuna.Study) -> None:
    best = toy_study.best_trial
    assert abs(best.params["y"] - 5) <= 2 and abs(best.params["x"] - 0.3) < 0.45
    folds = best.user_attrs["folds"]
    assert [f["fold"] for f in folds] == [0, 1, 2]
    assert all("oos_sharpe" in f and f["oos_n_trades"] > 0 for f in folds)
    # the objective is the mean out-of-sample score across the folds
    assert best.value == pytest.approx(np.mean([f["oos_sharpe"] for f in folds]))
    assert len(best.user_attrs["oos_returns"]) == 15  # 3 test windows x 5 sessions


def test_min_trades_prunes_a_set_that_trades_too_little(tmp_path: Any) -> None:
    study = run_study(_cfg(tmp_path, "mt", trials=12, min_trades=10**6), toy_problem)
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert any("min_trades" in t.user_attrs for t in study.trials)


def test_same_seed_gives_the_same_best_parameters(tmp_path: Any) -> None:
    a = run_study(_cfg(tmp_path, "rep_a", trials=20), toy_problem)
    b = run_study(_cfg(tmp_path, "rep_b", trials=20), toy_problem)
    assert a.best_params == b.best_params
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    c = run_study(_cfg(tmp_path, "rep_c", trials=20, seed=99), toy_problem)
    assert [t.params for t in c.trials] != [t.params for t in a.trials]


def test_config_refuses_bad_options_by_name() -> None:
    with pytest.raises(ConfigError, match="--objective"):
        TuneConfig(objective="alpha")
    with pytest.raises(ConfigError, match="--workers"):
        TuneConfig(workers=0)


def test_space_maps_to_optuna_suggestions_and_back() -> None:
    from research.tune import suggest
    from strategies.space import Choice

    space = {"a": FloatParam(0.0, 0.1, step=0.01), "n": IntParam(1, 9, step=2), "pair": Choice((("QQQ", "SQQQ"), None))}
    trial = optuna.trial.FixedTrial({"a": 0.060000000000000005, "n": 7, "pair": repr(("QQQ", "SQQQ"))})
    assert suggest(trial, space) == {"a": 0.06, "n": 7, "pair": ("QQQ", "SQQQ")}


def test_storage_password_never_reaches_the_logs() -> None:
    from research.tune import _safe_url

    assert "s3cret" not in _safe_url("postgresql+psycopg://bob:s3cret@db.example:5432/optuna")
    assert _safe_url("postgresql+psycopg://postgres@127.0.0.1:5432/test").endswith("@127.0.0.1:5432/test")


def test_rerunning_a_study_tops_it_up_to_trials_unless_fresh(tmp_path: Any) -> None:
    cfg = _cfg(tmp_path, "resume", trials=4)
    first = run_study(cfg, toy_problem)
    again = run_study(cfg, toy_problem)  # the same command twice: nothing to add, the same answer
    assert len(again.trials) == 4 and again.best_params == first.best_params
    assert len(run_study(dataclasses.replace(cfg, trials=7), toy_problem).trials) == 7
    assert len(run_study(dataclasses.replace(cfg, fresh=True), toy_problem).trials) == 4
