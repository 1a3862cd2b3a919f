"""Two worker processes share one study on the local PostgreSQL: every trial lands once, none is lost."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import optuna
import pytest
from test_tune_study import toy_problem

from research.tune import TuneConfig, run_study

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


@pytest.fixture
def pg_study() -> Iterator[str]:
    reason = _pg_answers()
    if reason:
        if IN_CI:
            pytest.fail(reason)
        print(f"SKIP: {reason}")
        pytest.skip(reason)
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
