"""Processes sharing one study: local --workers on PostgreSQL, and independent processes running the
same command on PostgreSQL, a Redis journal and a journal file. Every trial lands once, none is lost,
none is repeated, and the study stops at exactly --trials."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from test_tune_study import ROOT, driver_command, toy_problem

from research.tune import TuneConfig, kept_trials, make_storage, run_study

PG_URL = os.environ.get("TIERLAB_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _pg_answers() -> str | None:
    import psycopg

    try:
        with psycopg.connect(PG_URL.replace("postgresql+psycopg", "postgresql"), connect_timeout=3) as conn:
            conn.execute("select 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_URL} does not answer: {str(exc).strip().splitlines()[0]}"
    return None


def _need_pg() -> None:
    reason = _pg_answers()
    if reason:
        if IN_CI:
            pytest.fail(reason)
        print(f"SKIP: {reason}")
        pytest.skip(reason)


@pytest.fixture
def pg_study() -> Iterator[str]:
    _need_pg()
    name = f"tierlab-test-{uuid.uuid4().hex[:10]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=PG_URL)
    except KeyError:
        pass


@pytest.mark.postgres
@pytest.mark.slow
def test_two_workers_share_one_postgres_study(pg_study: str) -> None:
    cfg = TuneConfig(study=pg_study, trials=12, storage=PG_URL, workers=2, seed=5, progress=False,
                     startup_trials=4, extra={"sleep": 0.05})
    study = run_study(cfg, toy_problem)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 12  # none lost, none duplicated
    assert sorted(t.number for t in trials) == list(range(12))
    assert all(t.state.is_finished() for t in trials)
    by_worker: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs["worker"], []).append(t)
    assert sorted(by_worker) == [0, 1] and [len(by_worker[w]) for w in (0, 1)] == [6, 6]
    # the two processes ran at the same time: their busy intervals overlap
    spans = {w: (min(t.datetime_start for t in ts), max(t.datetime_complete for t in ts)) for w, ts in by_worker.items()}
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]
    # differently seeded workers do not repeat each other's candidates
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 12


@pytest.fixture(params=["postgres", "redis", "journal_file"])
def shared_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A storage URL two processes can share, cleaned up afterwards (only this test's keys/study)."""
    if request.param == "postgres":
        _need_pg()
        yield PG_URL
    elif request.param == "redis":
        import redis

        url = request.getfixturevalue("redis_url")
        prefix = f"tierlab-test-optuna-{uuid.uuid4().hex[:12]}"
        yield f"{url}?prefix={prefix}"
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    else:
        yield str(tmp_path / "shared.journal")


@pytest.mark.slow
def test_two_processes_running_the_same_command_finish_exactly_n_trials(shared_storage: str, tmp_path: Path) -> None:
    name = f"tierlab-test-{uuid.uuid4().hex[:10]}"
    n = 10
    cmd = driver_command("--study", name, "--trials", str(n), "--storage", shared_storage, "--seed", "7",
                         "--holdout-days", "0")
    # windows slow enough that a process starting seconds late on a loaded machine still finds trials left
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "TOY_SLEEP": "0.25"}
    procs = []
    for k in range(2):
        work = tmp_path / f"p{k}"
        work.mkdir()
        procs.append(subprocess.Popen(cmd, cwd=work, env={**env, "TIERLAB_HOME": str(work / "home")},
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
        study = optuna.load_study(study_name=name, storage=make_storage(shared_storage))
        trials = study.get_trials(deepcopy=False)
        kept = kept_trials(study)
        assert len(kept) == n
        # a process that lost the race for the last slot leaves a marked trial that never ran
        assert all(t.user_attrs.get("surplus") for t in trials if t not in kept)
        assert all(t.state.is_finished() for t in trials)
        ran = [t for t in kept if t.params]
        assert len({tuple(sorted(t.params.items())) for t in ran}) == len(ran)  # no parameter set twice
        by_process: dict[str, list[optuna.trial.FrozenTrial]] = {}
        for t in sorted(kept, key=lambda t: t.number):
            by_process.setdefault(t.user_attrs["worker_id"], []).append(t)
        assert len(by_process) == 2, "both processes should have run trials"
        first = [ts[0].params for ts in by_process.values()]
        assert first[0] != first[1]  # no shared seed: the first trials differ
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if shared_storage == PG_URL:
            try:
                optuna.delete_study(study_name=name, storage=PG_URL)
            except KeyError:
                pass
