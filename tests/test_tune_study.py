"""The study machinery on a small stand-in problem (test-only), so each outcome is known in advance.

The stand-in's fold score peaks at x = 0.3, y = 5; y = 4 is refused by its `replace` (like a
ConfigError from Params.replace), x + y <= 0.5 violates its constraint, y = 0 never trades and
x > 0.9 raises inside the backtest. The real problem (the strategy on the sample) is exercised
in tests/test_tune_cli.py.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest

from research.tune import Problem, TuneConfig, WindowResult, kept_trials, make_storage, run_study
from research.walkforward import walk_forward
from strategies.space import Constraint, FloatParam, IntParam
from tierlab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


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

    def to_toml(self, path: Path) -> None:
        path.write_text(f"x = {self.x!r}\ny = {self.y!r}\n")


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


def test_resuming_with_other_settings_is_refused_naming_both_values(tmp_path: Any) -> None:
    cfg = _cfg(tmp_path, "settings", trials=3, holdout_days=0)
    run_study(cfg, toy_problem)
    changes = [
        ({"holdout_days": 5}, "holdout_days 0, this run has 5"),
        ({"objective": "calmar"}, "objective 'sharpe', this run has 'calmar'"),
        ({"start": "2024-01-02"}, "date_range 'default..default', this run has '2024-01-02..default'"),
        ({"min_trades": 2}, "min_trades 1, this run has 2"),
        ({"trials": 5, "mode": "relaxed"}, "mode 'default', this run has 'relaxed'"),
    ]
    for change, words in changes:
        with pytest.raises(ConfigError, match="--fresh") as err:
            run_study(dataclasses.replace(cfg, **change), toy_problem)
        assert words in str(err.value) and "\n" not in str(err.value)
    study = run_study(cfg, toy_problem)  # the unchanged command still resumes: nothing was added
    assert len(study.trials) == 3
    fresh = run_study(dataclasses.replace(cfg, holdout_days=5, fresh=True), toy_problem)
    assert len(fresh.trials) == 3 and fresh.user_attrs["settings"]["holdout_days"] == 5


def test_a_changed_search_space_is_refused_naming_the_parameter(tmp_path: Any) -> None:
    cfg = _cfg(tmp_path, "space", trials=2)
    run_study(cfg, toy_problem)

    def narrower(c: TuneConfig) -> Problem:
        return toy_problem(c)._replace(space={"x": FloatParam(0.0, 1.0), "y": IntParam(0, 8)})

    with pytest.raises(ConfigError, match=r"search_space x 'FloatParam\(low=-1.0.*this run has 'FloatParam\(low=0.0"):
        run_study(cfg, narrower)


def test_a_resumed_study_does_not_replay_its_first_draws(tmp_path: Any) -> None:
    # one sampler seed for the whole process would start the second run on the first run's stream
    cfg = _cfg(tmp_path, "replay", trials=3, startup_trials=20)
    run_study(cfg, toy_problem)
    study = run_study(dataclasses.replace(cfg, trials=6), toy_problem)
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(params) == 6 and len(set(params)) == 6


def test_bad_storage_is_one_line_and_exit_2(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from research.tune import main

    bad = {
        "redis://127.0.0.1:notaport/0": "port is not a number",
        "redis://127.0.0.1:6379/zero": "expected redis://HOST:PORT/DB",
        "nosuchdb://user@host/x": "cannot open it",
        "postgresql+psycopg://postgres:hunter2@127.0.0.1:1/test": "cannot open it",
        "redis://:hunter2@127.0.0.1:1/0": "cannot open it",  # nothing listens on port 1
        str(tmp_path / "missing" / "study.journal"): "does not exist",
    }
    for url, words in bad.items():
        code = main(["--study", "bad", "--trials", "1", "--storage", url, "--no-progress"], toy_problem)
        err = capsys.readouterr().err.strip()
        assert code == 2, url
        assert err.startswith("error: --storage") and words in err, err
        assert "\n" not in err and "Traceback" not in err and "hunter2" not in err


def _driver_env(tmp_path: Any, sleep: float) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
            "TIERLAB_HOME": str(tmp_path / "home"), "TOY_SLEEP": str(sleep)}


def driver_command(*args: str) -> list[str]:
    """`python -m research.tune ARGS` on the stand-in problem (this file run as a script)."""
    return [sys.executable, str(Path(__file__).resolve()), "--no-progress", "--min-trades", "1", *args]


def test_ctrl_c_keeps_finished_trials_and_the_rerun_completes_the_study(tmp_path: Any) -> None:
    storage = str(tmp_path / "study.journal")
    cmd = driver_command("--study", "sigint", "--trials", "30", "--storage", storage, "--seed", "4")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_driver_env(tmp_path, 0.1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            study = optuna.load_study(study_name="sigint", storage=make_storage(storage))
        except KeyError:
            continue
        if len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) >= 3:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    study = optuna.load_study(study_name="sigint", storage=make_storage(storage))
    kept = kept_trials(study)
    assert f"interrupted: {len(kept)} trials kept; re-run to resume" in err.strip().splitlines()[-1]
    assert 3 <= len(kept) < 30
    cut = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert len(cut) == 1 and cut[0].state == optuna.trial.TrialState.FAIL
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    # the same settings again add only the missing trials; the cut one does not count
    study = run_study(TuneConfig(study="sigint", trials=30, storage=storage, seed=4, min_trades=1, progress=False),
                      toy_problem)
    assert len(kept_trials(study)) == 30 and len(study.trials) == 31


def toy_problem_env_sleep(cfg: TuneConfig) -> Problem:
    """The stand-in problem with each window taking $TOY_SLEEP seconds (module level: --workers pickles it)."""
    return toy_problem(dataclasses.replace(cfg, extra={"sleep": float(os.environ.get("TOY_SLEEP", "0"))}))


if __name__ == "__main__":  # the stand-in problem behind the real CLI, for tests that need processes
    from research.tune import main

    raise SystemExit(main(sys.argv[1:], toy_problem_env_sleep))
