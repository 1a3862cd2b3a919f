"""Optuna studies over the strategy's declared search space, scored out of sample by walk-forward folds.

The only module that imports optuna. A trial samples the strategy's `search_space` (suggest_int /
suggest_float / suggest_categorical), checks its `constraints` and `Params.replace`, then walks the
folds in order: after each fold it reports the running mean of the out-of-sample scores
(`trial.report`) so the MedianPruner can stop hopeless trials early. The objective is that mean.

Trial outcomes:
- infeasible (a constraint fails or `Params.replace` raises ConfigError): PRUNED before any
  backtest, with user attr `infeasible` naming the reason;
- a fold with fewer than `--min-trades` out-of-sample trades: PRUNED at that fold (user attr
  `min_trades`), so a set that barely trades can never win on a lucky Sharpe ratio. TPE treats
  pruned trials as worse than complete ones, which is the intended "failing" score;
- an exception from the backtest: FAILED (user attr `error`); the study goes on;
- Ctrl-C: the running trial is FAILED with user attr `interrupted` and does not count toward the
  study size; the CLI prints "interrupted: N trials kept; re-run to resume".

What "out of sample" means here: each fold's test window is unseen by that fold's training window,
but the optimizer ranks parameter sets by those test scores, so choosing the best trial is itself a
fit to the test windows. Three guards measure that selection: the deflated Sharpe ratio (given the
number of trials), PBO by CSCV, and a holdout: the last `--holdout-days` sessions (after a purge gap)
are never shown to the optimizer and are scored once, for the best trial only.

A study records its settings (strategy, objective, date range, fold plan, purge, holdout, min
trades, mode, search space) in its user attrs; resuming it with any of them changed is refused,
naming the setting and both values (`--fresh` starts over).

Storage defaults to SQLite under `tierlab_home()/studies/`. A PostgreSQL URL, `redis://HOST:PORT/DB`
(Optuna's JournalStorage on Redis; `?prefix=NAME` picks the key prefix, default `tierlab-optuna`) or
a plain file path (a journal file) lets processes on several machines share one study. `--trials N`
is the number of finished trials the study should hold: running the same command again adds only the
missing ones (none, if the study is complete), so a re-run reports the same best trial; several
processes on one storage stop at exactly N between them (each new trial claims a slot by its trial
number, which the storage hands out once). A trial left RUNNING by a process killed with -9 keeps
its slot (Optuna cannot tell it from a slow one); `--fresh` starts over. `--fresh` deletes the study
first; `--workers W` starts W local processes on the same storage.

Seeding: the sampler's random stream for trial number n is seeded from (seed, n). Trial numbers are
unique within a study, so processes sharing a study never draw the same stream, whichever machine
runs them; a resumed study does not replay its first draws; and one process on a fresh study gives
the same trials and best parameters for the same seed. Each trial also records the process that ran
it (user attrs `worker`, the local worker index, and `worker_id`, host-pid-uuid).

After the study, `report` re-runs the best trial on each fold's train window for the in-sample
side of the per-fold table (only the best trial: the objective itself never looks at in-sample
numbers), computes the deflated Sharpe ratio and PBO (research/tune_report.py, research/overfit.py),
writes the best parameters as a Params TOML file and an HTML report with Optuna's plots into the
run's own folder `reports/tune-<mode>-<start>_<end>-<hash>/` (research/runs.py; `reports/tune-latest`
points at the newest). The base parameters are the preset, then `TIERLAB_<FIELD>` variables.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `--help` and a bad flag answer before optuna and pandas load (about 3 s)
    from research.tune_cli import build_parser as _early_parser

    _early_parser().parse_args()

import dataclasses
import json
import math
import multiprocessing as mp
import os
import signal
import socket
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit, urlunsplit

import numpy as np
import optuna
import pandas as pd

from data.calendar import ny_days
from research.runs import RunDir, settings_hash
from research.tune_cli import OBJECTIVES as OBJECTIVES  # re-exported with TuneConfig and parse_args
from research.tune_cli import TuneConfig, parse_args
from research.tune_report import (
    Guards,
    TrialRecord,
    compute_guards,
    fold_table,
    holdout_lines,
    render_html,
    summary_lines,
)
from research.walkforward import Fold, session_numbers, study_plan, window_panel
from strategies.space import Choice, Constraint, FloatParam, IntParam, Space
from tierlab.errors import ConfigError, TierlabError
from tierlab.log import get_logger
from tierlab.paths import tierlab_home

log = get_logger(__name__)

# Calmar/Sortino are infinite without a drawdown/downside; clip so one such fold cannot dominate.
SCORE_CLIP = 1e3
_PRIMITIVE = (type(None), bool, int, float, str)


class WindowResult(NamedTuple):
    """One parameter set on one window of sessions: its metrics and its return per session."""

    metrics: Mapping[str, float]  # at least the objective's metric and n_trades
    returns: pd.Series  # one return per session, indexed by the session date (ISO string)


class Problem(NamedTuple):
    """What a study optimizes: the space, its constraints, the base Params, the folds and a window evaluator.

    `evaluate(params, sessions)` backtests one parameter set on a range of session numbers; the
    objective calls it on each fold's test window, the report on the best trial's train windows.
    """

    space: Mapping[str, Space]
    constraints: Sequence[Constraint]
    base: Any  # Params (or a stand-in with .replace(**changes) and .model_dump())
    folds: Sequence[Fold]
    evaluate: Callable[[Any, range], WindowResult]
    holdout: range | None = None  # sessions the optimizer never sees; scored for the best trial only
    settings: Mapping[str, Any] | None = None  # e.g. strategy name and the sessions' date range


ProblemFactory = Callable[[TuneConfig], Problem]


def default_storage() -> str:
    """SQLite file under `tierlab_home()/studies/`: runs with no database service."""
    d = tierlab_home() / "studies"
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{d / 'optuna.db'}"


def suggest(trial: optuna.Trial, space: Mapping[str, Space]) -> dict[str, Any]:
    """Sample one candidate from the declared space with the matching optuna suggest_* call."""
    out: dict[str, Any] = {}
    for name, s in space.items():
        if isinstance(s, IntParam):
            out[name] = trial.suggest_int(name, s.low, s.high, step=s.step)
        elif isinstance(s, FloatParam):
            out[name] = trial.suggest_float(name, s.low, s.high, step=s.step, log=s.log)
        elif isinstance(s, Choice):
            if all(isinstance(c, _PRIMITIVE) for c in s.choices):
                out[name] = trial.suggest_categorical(name, list(s.choices))
            else:  # tuples etc.: optuna stores primitives only, so sample the label and map back
                labels = [repr(c) for c in s.choices]
                out[name] = s.choices[labels.index(trial.suggest_categorical(name, labels))]
        else:
            raise ConfigError(f"search space {name!r}: unsupported declaration {s!r}")
    return normalize(space, out)


def normalize(space: Mapping[str, Space], values: Mapping[str, Any]) -> dict[str, Any]:
    """Values as the space declares them: stepped floats rounded to the grid (0.06, not 0.060000000000000005)."""
    out = dict(values)
    for name, v in values.items():
        s = space.get(name)
        if isinstance(s, FloatParam) and s.step is not None:
            out[name] = round(float(v), 10)
        elif isinstance(s, Choice) and v not in s.choices and v in (labels := [repr(c) for c in s.choices]):
            out[name] = s.choices[labels.index(v)]  # a label stored by optuna for a non-primitive choice
    return out


def build_params(base: Any, values: Mapping[str, Any], constraints: Sequence[Constraint]) -> Any:
    """Apply a candidate to the base Params; ConfigError names the violated constraint or field."""
    merged = {**base.model_dump(), **values}
    for c in constraints:
        if not c.holds(merged):
            raise ConfigError(f"constraint violated: {c.message} ({_fmt(values)})")
    return base.replace(**values)


def score_of(metrics: Mapping[str, float], metric: str) -> float:
    """The objective's value of one fold: NaN stays NaN (undefined), infinities are clipped."""
    v = float(metrics.get(metric, math.nan))
    return v if math.isnan(v) else float(np.clip(v, -SCORE_CLIP, SCORE_CLIP))


def make_objective(problem: Problem, cfg: TuneConfig, worker: int = 0) -> Callable[[optuna.Trial], float]:
    """The study objective: mean out-of-sample score over the folds, reported fold by fold for pruning."""

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker)
        values = suggest(trial, problem.space)
        try:
            params = build_params(problem.base, values, problem.constraints)
        except ConfigError as exc:
            trial.set_user_attr("infeasible", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        folds: list[dict[str, Any]] = []
        returns: dict[str, float] = {}
        scores: list[float] = []
        for fold in problem.folds:
            res = problem.evaluate(params, fold.test)
            row = {"fold": fold.number, "train": [fold.train.start, fold.train.stop],
                   "test": [fold.test.start, fold.test.stop]}
            row |= {f"oos_{k}": _num(v) for k, v in res.metrics.items()}
            folds.append(row)
            returns |= {str(k): float(v) for k, v in res.returns.items()}
            trial.set_user_attr("folds", folds)
            trades = int(res.metrics.get("n_trades", 0))
            if trades < cfg.min_trades:
                msg = f"fold {fold.number}: {trades} out-of-sample trades < --min-trades {cfg.min_trades}"
                trial.set_user_attr("min_trades", msg)
                raise optuna.TrialPruned(msg)
            s = score_of(res.metrics, cfg.metric)
            if math.isnan(s):
                trial.set_user_attr("undefined", f"fold {fold.number}: {cfg.metric} is undefined")
                raise optuna.TrialPruned(f"fold {fold.number}: {cfg.metric} undefined")
            scores.append(s)
            trial.report(float(np.mean(scores)), step=fold.number)
            if trial.should_prune():
                msg = f"fold {fold.number}: running out-of-sample score below the median of earlier trials"
                trial.set_user_attr("pruned", msg)
                raise optuna.TrialPruned(msg)
        trial.set_user_attr("oos_returns", returns)
        return float(np.mean(scores))

    return objective


STUDY_SETTINGS = ("strategy", "objective", "date_range", "fold_plan", "purge_days", "holdout_days", "min_trades",
                 "mode", "search_space", "base_params", "llm")
_STATES = optuna.trial.TrialState
_FINISHED = (_STATES.COMPLETE, _STATES.PRUNED, _STATES.FAIL)
REDIS_PREFIX = "tierlab-optuna"


class StudyInterrupted(Exception):
    """Ctrl-C stopped a study; `kept` finished trials stay in the storage and a re-run resumes."""

    def __init__(self, kept: int) -> None:
        super().__init__(f"interrupted: {kept} trials kept; re-run to resume")
        self.kept = kept


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage behind `--storage`: an RDB URL, `redis://HOST:PORT/DB` or a journal file path.

    Anything that cannot be opened is one ConfigError naming the (password-free) URL and the cause.
    """
    safe = _safe_url(url)
    try:
        if url.split("://", 1)[0] in ("redis", "rediss", "unix") and "://" in url:
            return _redis_storage(url)
        if "://" not in url:
            return _journal_file_storage(url)
        return optuna.storages.RDBStorage(url)
    except ConfigError:
        raise
    except Exception as exc:  # any driver/URL/connection failure becomes one line
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        pw = urlsplit(url).password if "://" in url else None
        if pw:
            msg = msg.replace(pw, "***")
        raise ConfigError(f"--storage {safe}: cannot open it: {msg}") from None


def _redis_storage(url: str) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalRedisBackend, JournalStorage

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"--storage {_safe_url(url)}: the port is not a number (redis://HOST:PORT/DB)") from None
    db = parts.path.strip("/")
    if not parts.hostname or port is None or (db and not db.isdigit()):
        raise ConfigError(f"--storage {_safe_url(url)}: expected redis://HOST:PORT/DB, e.g. redis://127.0.0.1:6379/0")
    query = parse_qs(parts.query)
    prefix = query.pop("prefix", [REDIS_PREFIX])[0]
    if query:
        raise ConfigError(f"--storage {_safe_url(url)}: unknown option {sorted(query)[0]!r} (only ?prefix=NAME)")
    with warnings.catch_warnings():  # "JournalRedisBackend is experimental": noise on every run
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        backend = JournalRedisBackend(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), prefix=prefix)
        return JournalStorage(backend)


def _journal_file_storage(path: str) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    p = Path(path)
    if not p.parent.is_dir():
        raise ConfigError(f"--storage {path}: directory {p.parent} does not exist (a journal file path or a URL)")
    if p.is_dir():
        raise ConfigError(f"--storage {path}: is a directory; give a journal file path or a URL")
    if p.is_file():
        with p.open("rb") as f:
            if f.read(16).startswith(b"SQLite format 3"):
                raise ConfigError(f"--storage {path}: is an SQLite database; use sqlite:///{p.resolve()}")
    return JournalStorage(JournalFileBackend(str(p)))


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial `number` in a study seeded `seed` (distinct for every trial number)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(number)]).generate_state(1)[0])


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """TPE whose random stream is reseeded from (study seed, trial number) before each trial.

    Processes sharing a study claim distinct trial numbers from the storage, so they never draw the
    same candidates; one process on a fresh study is reproducible. TPE (independent sampling) keeps
    no state between trials other than its random stream: it reads the history from the study.
    """

    def __init__(self, seed: int, n_startup_trials: int) -> None:
        self._seed = seed
        self._startup = n_startup_trials
        self._tpe = self._make(trial_seed(seed, 0))

    def _make(self, seed: int) -> optuna.samplers.TPESampler:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self._startup)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Start trial `trial.number` on its own random stream."""
        self._tpe = self._make(trial_seed(self._seed, trial.number))
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        """Delegated to TPE."""
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, Any]) -> dict[str, Any]:
        """Delegated to TPE."""
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        """Delegated to TPE."""
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: Any,
                    values: Sequence[float] | None) -> None:
        """Delegated to TPE."""
        self._tpe.after_trial(study, trial, state, values)


def open_study(cfg: TuneConfig, storage: optuna.storages.BaseStorage | str | None = None) -> optuna.Study:
    """Create or load the study on the configured storage (maximize, per-trial seeded TPE, median pruning)."""
    return optuna.create_study(
        storage=storage if storage is not None else make_storage(cfg.storage or default_storage()),
        study_name=cfg.study,
        direction="maximize",
        load_if_exists=True,
        sampler=TrialSeededTPE(cfg.seed, cfg.startup_trials),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0),
    )


def _counts(t: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts toward the study size (not cut by Ctrl-C, not started past the size)."""
    return not (t.user_attrs.get("interrupted") or t.user_attrs.get("surplus"))


def kept_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The finished trials that count toward `--trials` (interrupted and surplus ones left out)."""
    return [t for t in study.get_trials(deepcopy=False, states=_FINISHED) if _counts(t)]


def _claimed(study: optuna.Study, below: int | None = None) -> int:
    """Trials that hold a slot of the study size: counted ones, finished or running (numbers < below)."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if _counts(t) and t.state != _STATES.WAITING and (below is None or t.number < below))


def study_settings(cfg: TuneConfig, problem: Problem) -> dict[str, Any]:
    """The settings a study's trials depend on, as JSON-ready values (stored in the study's user attrs)."""
    extra = dict(problem.settings or {})
    folds = list(problem.folds)
    if folds:
        f0 = folds[0]
        step = folds[1].test.start - f0.test.start if len(folds) > 1 else len(f0.test)
        plan = (f"{len(folds)} folds: train {len(f0.train)}, test {len(f0.test)}, step {step} sessions, "
                f"first test {f0.test.start}..{f0.test.stop - 1}, last test {folds[-1].test.start}.."
                f"{folds[-1].test.stop - 1}")
    else:
        plan = "no folds"
    space = {name: repr(s) for name, s in problem.space.items()}
    space |= {f"constraint {k}": c.message for k, c in enumerate(problem.constraints)}
    out = {
        "strategy": extra.get("strategy", type(problem.base).__name__),
        "objective": cfg.objective,
        "date_range": extra.get("date_range", f"{cfg.start or 'default'}..{cfg.end or 'default'}"),
        "fold_plan": plan,
        "purge_days": cfg.purge_days,
        "holdout_days": cfg.holdout_days,
        "min_trades": cfg.min_trades,
        "mode": cfg.mode,
        "search_space": space,
        "base_params": extra.get("base_params"),
    }
    if cfg.llm != "off":  # absent when off, so studies made before --llm resume unchanged
        out["llm"] = cfg.llm
    return json.loads(json.dumps(out, default=repr))


def check_settings(study: optuna.Study, settings: Mapping[str, Any]) -> None:
    """Record `settings` on a new study; refuse (one line, both values) to resume one made with other settings."""
    old = study.user_attrs.get("settings")
    if old is None:
        n = len(study.get_trials(deepcopy=False))
        if n:
            raise ConfigError(f"study {study.study_name!r} holds {n} trials but no recorded settings (an older "
                              "tierlab made it): --fresh starts over, or pick another --study name")
        study.set_user_attr("settings", dict(settings))
        return
    for key in STUDY_SETTINGS:
        was, now = old.get(key), settings.get(key)
        if was == now or (key == "base_params" and key not in old):  # a study recorded before base_params
            continue
        if isinstance(was, dict) and isinstance(now, dict):
            sub = next(k for k in sorted(set(was) | set(now), key=str) if was.get(k) != now.get(k))
            key, was, now = f"{key} {sub}", was.get(sub, "absent"), now.get(sub, "absent")
        raise ConfigError(f"study {study.study_name!r} was run with {key} {was!r}, this run has {now!r}: "
                          "resume with the same settings, or --fresh to start over")


def _worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _abandon(study: optuna.Study, trial: optuna.Trial, attr: str, why: str) -> None:
    """Finish a trial that must not count (FAIL with user attr `attr`), if it is still running."""
    frozen = study._storage.get_trial(trial._trial_id)  # the current state, not a cache
    if frozen.state.is_finished():
        study._storage.set_trial_user_attr(trial._trial_id, attr, why)
        return
    trial.set_user_attr(attr, why)
    study.tell(trial, state=_STATES.FAIL)


def optimize(study: optuna.Study, problem: Problem, cfg: TuneConfig, n_trials: int, worker: int = 0,
             progress: bool = False) -> int:
    """Run up to `n_trials` trials in this process, stopping when the study holds `cfg.trials` counted trials.

    Each trial claims its slot by number: one that finds `cfg.trials` counted trials numbered below
    it is finished as `surplus` without a backtest, so processes racing for the last slots leave
    exactly `cfg.trials`. Ctrl-C finishes the running trial as `interrupted` and re-raises.
    Returns the number of trials this process ran.
    """
    objective = make_objective(problem, cfg, worker)
    wid = _worker_id()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_trials, desc=f"study {cfg.study}")
    done = 0
    try:
        while done < n_trials and _claimed(study) < cfg.trials:
            trial = study.ask()
            try:
                trial.set_user_attr("worker_id", wid)
                if _claimed(study, below=trial.number) >= cfg.trials:
                    _abandon(study, trial, "surplus", f"the study already held {cfg.trials} trials")
                    break
                value = objective(trial)
            except optuna.TrialPruned:
                study.tell(trial, state=_STATES.PRUNED)
            except KeyboardInterrupt:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the bookkeeping
                try:
                    _abandon(study, trial, "interrupted", "Ctrl-C")
                finally:
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                raise
            except Exception as exc:  # a crashing backtest fails its trial, the study goes on
                trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
                log.warning("trial_failed", study=cfg.study, trial=trial.number, reason=f"{type(exc).__name__}: {exc}")
                study.tell(trial, state=_STATES.FAIL)
            else:
                study.tell(trial, value)
            done += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return done


def _worker(cfg: TuneConfig, factory: ProblemFactory, n_trials: int, worker: int, progress: bool) -> None:
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = open_study(cfg)
        optimize(study, factory(cfg), cfg, n_trials, worker, progress)
    except KeyboardInterrupt:
        sys.exit(130)  # the parent prints the one line; no traceback per process


def run_study(cfg: TuneConfig, factory: ProblemFactory | None = None, problem: Problem | None = None) -> optuna.Study:
    """Top the study up to `cfg.trials` counted trials (over `cfg.workers` processes) and return it.

    Raises ConfigError when the study was made with other settings, StudyInterrupted on Ctrl-C.
    """
    factory = factory or backtest_problem
    url = cfg.storage or default_storage()
    cfg = TuneConfig(**{**asdict(cfg), "storage": url})
    storage = make_storage(url)
    if cfg.fresh:
        try:
            optuna.delete_study(study_name=cfg.study, storage=storage)
        except KeyError:
            pass
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    problem = factory(cfg) if problem is None else problem
    study = open_study(cfg, storage)  # create once, before workers race to create it
    check_settings(study, study_settings(cfg, problem))
    existing = len(kept_trials(study))
    todo = max(0, cfg.trials - existing)
    if existing:
        log.info("study_resumed", study=cfg.study, finished_trials=existing, target=cfg.trials, adding=todo,
                 reason="a study of this name exists on the storage; --trials is its size, --fresh starts over")
    if todo == 0:
        return study
    shares = [todo // cfg.workers + (i < todo % cfg.workers) for i in range(cfg.workers)]
    log.info("tune_start", study=cfg.study, trials=todo, workers=cfg.workers, objective=cfg.objective,
             storage=_safe_url(url))
    try:
        if cfg.workers == 1:
            optimize(study, problem, cfg, shares[0], 0, cfg.progress)
        else:
            _run_workers(cfg, factory, shares)
    except KeyboardInterrupt:
        raise StudyInterrupted(len(kept_trials(open_study(cfg, storage)))) from None
    return open_study(cfg, storage)


def _run_workers(cfg: TuneConfig, factory: ProblemFactory, shares: Sequence[int]) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(cfg, factory, n, i, cfg.progress and i == 0))
             for i, n in enumerate(shares) if n]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches every worker; one sent to this process alone is passed on.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for p in procs:
            p.join(timeout=10)
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGINT)
                p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise
    bad = [p.exitcode for p in procs if p.exitcode]
    if 130 in bad:  # a worker was interrupted on its own (SIGINT to it alone)
        raise KeyboardInterrupt
    if bad:
        raise TierlabError(f"{len(bad)} tuning worker(s) exited with codes {bad}")


def _safe_url(url: str) -> str:
    """Storage URL without a password (never log secrets)."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _fmt(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


def records(study: optuna.Study) -> list[TrialRecord]:
    """The study's trials as plain records for the report (interrupted and surplus ones left out)."""
    return [
        TrialRecord(t.number, t.state.name, t.value, dict(t.params), dict(t.user_attrs))
        for t in study.get_trials(deepcopy=False)
        if _counts(t)
    ]


def fold_rows(problem: Problem, trial: TrialRecord) -> list[dict[str, Any]]:
    """The trial's per-fold out-of-sample metrics with its in-sample (train window) metrics added."""
    params = problem.base.replace(**normalize(problem.space, trial.params))
    rows = []
    for row, fold in zip(trial.user_attrs.get("folds", []), problem.folds, strict=False):
        ins = problem.evaluate(params, fold.train).metrics
        rows.append({**row, **{f"is_{k}": _num(v) for k, v in ins.items()}})
    return rows


def figures(study: optuna.Study) -> dict[str, Any]:
    """Optuna's plots of the study (history, importances, slices, intermediate values) as plotly figures."""
    vis = optuna.visualization
    out: dict[str, Any] = {"Optimization history": vis.plot_optimization_history(study)}
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) >= 2 and len(study.best_params) >= 1:
        try:
            out["Parameter importances"] = vis.plot_param_importances(study)
        except (RuntimeError, ValueError, ZeroDivisionError) as exc:  # e.g. all values equal
            log.warning("plot_skipped", plot="param_importances", reason=str(exc))
    out["Slices"] = vis.plot_slice(study)
    out["Fold-by-fold running score (pruning)"] = vis.plot_intermediate_values(study)
    return out


@dataclass(frozen=True)
class StudyReport:
    """What a finished study produced: the summary lines and the files written."""

    lines: list[str]
    params_path: Path | None
    html_path: Path | None
    guards: Guards


def report(study: optuna.Study, problem: Problem, cfg: TuneConfig, out_dir: Path | None = None) -> StudyReport:
    """Compute the guards, print-ready summary, best params TOML and the HTML report (under reports/)."""
    recs = records(study)
    done = [r for r in recs if r.state == "COMPLETE"]
    if not done:
        raise TierlabError(
            f"study {cfg.study!r}: no trial completed every fold ({len(recs)} trials); widen the "
            f"search space, lower --min-trades ({cfg.min_trades}) or add sessions"
        )
    best = next(r for r in done if r.number == study.best_trial.number)
    best = dataclasses.replace(best, params=normalize(problem.space, best.params))
    table = fold_table(fold_rows(problem, best), _table_columns(cfg.metric))
    guards = compute_guards(recs, best.number)
    lines = [f"study {cfg.study!r}: objective {cfg.objective} ({cfg.metric}), seed {cfg.seed}"]
    lines += summary_lines(best, table, guards, cfg.objective)
    if problem.holdout is not None and len(problem.holdout):
        params = problem.base.replace(**normalize(problem.space, best.params))
        hold = problem.evaluate(params, problem.holdout).metrics
        shown = ", ".join(f"{k} {'n/a' if _num(hold.get(k)) is None else format(_num(hold.get(k)), '.4f')}"
                          for k in _table_columns(cfg.metric))
        lines.append(f"  holdout, {len(problem.holdout)} sessions never seen by the optimizer: {shown}")
        lines += holdout_lines(best, hold, cfg.metric)
    run = None
    if out_dir is None:  # its own run folder under cfg.out (research/runs.py); `<out>/tune-latest` points at it
        run = run_folder(problem, cfg)
        out_dir = run.path
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params_path = out_dir / "best_params.toml"
    problem.base.replace(**normalize(problem.space, best.params)).to_toml(params_path)
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(f"tierlab study {cfg.study}", lines, table, figures(study)))
    if run is not None:
        run.finish(["best_params.toml", "report.html"],
                   extra={"best_trial": best.number, "best_value": _num(best.value), "best_params": best.params,
                          "trials": len(recs)})
    lines += [f"best params: {params_path}", f"report: {html_path}"]
    return StudyReport(lines, params_path, html_path, guards)


def run_folder(problem: Problem, cfg: TuneConfig) -> RunDir:
    """The study run's folder: `tune-<mode>-<start>_<end>-<hash>`, the hash over the base params and the study."""
    rng = str((problem.settings or {}).get("date_range", ""))
    start, end = rng.split("..", 1) if ".." in rng and "(" not in rng else (cfg.start, cfg.end)
    extra = {"study": cfg.study, "storage": _safe_url(cfg.storage or default_storage()),
             "objective": cfg.objective, "seed": cfg.seed, "trials_target": cfg.trials,
             "fold_plan": study_settings(cfg, problem)["fold_plan"]}
    return RunDir.create("tune", mode=cfg.mode, start=start, end=end, params=problem.base, root=cfg.out,
                         extra=extra)


def _table_columns(metric: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys((metric, "sharpe", "total_return", "max_drawdown", "n_trades")))


def backtest_problem(cfg: TuneConfig) -> Problem:
    """The real problem: TieredBasketStrategy on the catalog's bars, each window run with research.backtest.run_grid.

    Bars come from the home catalog (the synthetic sample is written first if the catalog is
    empty); --start/--end default to the sample's range. Each window is backtested on its own
    (fresh cash): the score model's windows restart every session and the strategy is flat
    overnight, so nothing from training reaches the test window.
    """
    from data.catalog import Catalog
    from data.sample import DEFAULT_END, DEFAULT_START, ensure_sample
    from research.backtest import run_grid
    from strategies.params import Params
    from strategies.tiered_basket import TieredBasketStrategy

    base = Params.load(cfg.mode)  # preset, then TIERLAB_<FIELD> (a bad value is one line naming the variable)
    catalog = Catalog()
    if not catalog.symbols():  # only an empty catalog gets the sample: never mixed into real bars
        catalog = ensure_sample(catalog)
    start, end = cfg.start or DEFAULT_START, cfg.end or DEFAULT_END
    panel = catalog.read_panel(base.universe, start, end)
    events = catalog.read_events(start, end)
    strategy = TieredBasketStrategy(base)
    numbers = session_numbers(panel.index)
    n_sessions = int(numbers[-1]) + 1 if len(numbers) else 0
    folds, holdout = study_plan(n_sessions, cfg.train_days, cfg.test_days, cfg.purge_days, cfg.holdout_days)
    days = np.unique(ny_days(panel.index))
    settings = {"strategy": f"{type(strategy).__module__}.{type(strategy).__name__}",
                "date_range": f"{days[0]}..{days[-1]}" if len(days) else f"{start}..{end} (no bars)",
                "base_params": settings_hash(base)}  # a TIERLAB_<FIELD> change must not resume the study

    def evaluate(params: Any, sessions: range) -> WindowResult:
        sub = window_panel(panel, numbers, sessions)
        grid = run_grid(strategy, sub, [params], events=events, init_cash=INIT_CASH, llm=cfg.llm)
        metrics = grid.metrics.iloc[0].to_dict()
        return WindowResult(metrics, session_returns(grid.equity.iloc[:, 0], INIT_CASH))

    return Problem(strategy.search_space, strategy.constraints, base, folds, evaluate, holdout, settings)


INIT_CASH = 10_000.0


def session_returns(equity: pd.Series, init_cash: float) -> pd.Series:
    """Return of each session from the equity at bar closes (the first against `init_cash`), by NY date."""
    days = pd.Index(ny_days(pd.DatetimeIndex(equity.index))).astype(str)
    last = equity.groupby(days.to_numpy(), sort=True).last()
    prev = last.shift(1).fillna(init_cash)
    return last / prev - 1.0


def main(argv: Sequence[str] | None = None, factory: ProblemFactory | None = None) -> int:
    """CLI: run a study, print the best trial and its guards, write the params TOML and the HTML report."""
    cfg = None
    try:
        cfg = parse_args(argv)
        factory = factory or backtest_problem
        problem = factory(cfg)
        study = run_study(cfg, factory, problem)
        rep = report(study, problem, cfg)
    except TierlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StudyInterrupted as exc:
        print(exc, file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # outside the trials (loading bars, writing the report)
        print(f"interrupted: {_kept_quietly(cfg)} trials kept; re-run to resume", file=sys.stderr)
        return 130
    print("\n".join(rep.lines))
    return 0


def _kept_quietly(cfg: TuneConfig | None) -> int | str:
    """Counted trials of the study after a Ctrl-C, or '?' when the storage cannot tell."""
    if cfg is None:
        return 0
    try:
        return len(kept_trials(open_study(cfg)))
    except (Exception, KeyboardInterrupt):  # best effort on the way out
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
