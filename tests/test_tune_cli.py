"""`python -m research.tune` on the bundled sample: progress bar, best trial with guards, TOML and report.

The real problem (TieredBasketStrategy on the synthetic sample, windows run by research.backtest.run_grid)
with few trials, so the whole file stays within a few tens of seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from research.tune import TuneConfig, backtest_problem, run_study
from strategies.params import Params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    work = tmp_path_factory.mktemp("tune_cli")
    env = {**os.environ, "TIERLAB_HOME": str(work / "home"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "research.tune", "--trials", "10", "--study", "cli", "--seed", "3",
         "--min-trades", "5"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )
    return proc, work


def test_cli_prints_best_trial_with_guards(cli_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, work = cli_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "best trial #" in out
    assert "in-sample vs out-of-sample per fold" in out and "is_sharpe" in out and "oos_sharpe" in out
    assert "deflated Sharpe ratio:" in out
    assert "probability of backtest overfitting" in out
    assert "holdout, 5 sessions never seen by the optimizer: sharpe" in out
    assert "100%" in proc.stderr  # the progress bar ran to the end
    assert (work / "home" / "studies" / "optuna.db").exists()  # default storage: SQLite under TIERLAB_HOME


def test_resuming_the_study_over_other_dates_is_refused_in_one_line(
    cli_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, work = cli_run
    env = {**os.environ, "TIERLAB_HOME": str(work / "home"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "research.tune", "--trials", "10", "--study", "cli", "--seed", "3",
         "--min-trades", "5", "--end", "2024-12-05"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert err[-1] == (
        "error: study 'cli' was run with date_range '2024-10-21..2024-12-06', this run has "
        "'2024-10-21..2024-12-05': resume with the same settings, or --fresh to start over"
    )
    assert "Traceback" not in proc.stderr


def _printed(out: str, label: str) -> Path:
    """The path the CLI printed after `label` (relative to its working folder)."""
    return Path(next(ln for ln in out.splitlines() if ln.startswith(label))[len(label):].strip())


def test_study_writes_its_own_run_folder(cli_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, work = cli_run
    run = (work / _printed(proc.stdout, "report: ")).parent
    assert run.parent == work / "reports" and run.name.startswith("tune-default-2024-10-21_2024-12-06-")
    assert {"best_params.toml", "report.html", "params.toml", "meta.json"} <= {f.name for f in run.iterdir()}
    meta = json.loads((run / "meta.json").read_text())
    assert meta["kind"] == "tune" and meta["study"] == "cli" and meta["seed"] == 3
    assert (work / "reports" / "tune-latest").resolve() == run.resolve()
    assert (work / "reports" / "latest").resolve() == run.resolve()


def test_best_params_toml_is_a_params_file(cli_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, work = cli_run
    path = work / _printed(proc.stdout, "best params: ")
    p = Params.from_toml(path)
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("params:"))
    for item in line.split(":", 1)[1].split(","):
        name, value = item.strip().split("=")
        assert float(getattr(p, name)) == pytest.approx(float(value), rel=1e-5)
    # the file is taken unchanged by the backtest CLI
    from research.backtest import main as backtest_main

    assert backtest_main(["--params", str(path), "--start", "2024-12-02", "--end", "2024-12-03",
                          "--out", str(work / "bt")]) == 0


def test_report_has_optuna_plots(cli_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, work = cli_run
    html = (work / _printed(proc.stdout, "report: ")).read_text()
    for title in ("Optimization history", "Slices", "In-sample vs out-of-sample per fold", "deflated Sharpe"):
        assert title in html
    assert "plotly" in html.lower()


def test_same_seed_same_storage_type_gives_the_same_best_params(tmp_path: Path) -> None:
    best, trials = [], []
    for run in ("a", "b"):
        cfg = TuneConfig(study=f"repro-{run}", trials=8, seed=11, progress=False,
                         storage=f"sqlite:///{tmp_path / (run + '.db')}", startup_trials=3)
        study = run_study(cfg, backtest_problem)
        best.append(study.best_params)
        trials.append([t.params for t in study.trials])  # the TPE phase too, not only the random start
    assert best[0] == best[1]
    assert trials[0] == trials[1]


def test_the_holdout_is_never_shown_to_the_optimizer() -> None:
    cfg = TuneConfig(holdout_days=5, train_days=10, test_days=5, purge_days=1)
    problem = backtest_problem(cfg)
    assert problem.holdout is not None and len(problem.holdout) == 5
    seen = set().union(*(set(f.train) | set(f.test) for f in problem.folds))
    assert max(seen) + cfg.purge_days < problem.holdout.start  # a purge gap, then the holdout
