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
- an exception from the backtest: FAILED (optimize(catch=(Exception,))); the study goes on.

What "out of sample" means here: each fold's test window is unseen by that fold's training window,
but the optimizer ranks parameter sets by those test scores, so choosing the best trial is itself a
fit to the test windows. Three guards measure that selection: the deflated Sharpe ratio (given the
number of trials), PBO by CSCV, and a holdout: the last `--holdout-days` sessions (after a purge gap)
are never shown to the optimizer and are scored once, for the best trial only.

Storage defaults to SQLite under `tierlab_home()/studies/`; a PostgreSQL URL lets processes on
several machines share one study (each opens it with load_if_exists). `--trials N` is the number of
finished trials the study should hold: running the same command again adds only the missing ones
(none, if the study is complete), so a re-run reports the same best trial; `--fresh` deletes the
study first. `--workers W` starts W local processes on the same storage, worker i seeded with
seed + i so they do not repeat each other. With one worker, the same seed on a fresh study gives
the same trials and best parameters.

After the study, `report` re-runs the best trial on each fold's train window for the in-sample
side of the per-fold table (only the best trial: the objective itself never looks at in-sample
numbers), computes the deflated Sharpe ratio and PBO (research/tune_report.py, research/overfit.py),
writes the best parameters as a Params TOML file and an HTML report with Optuna's plots under
`reports/tune-<study>/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing as mp
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import optuna
import pandas as pd

from data.calendar import ny_days
from research.tune_report import (
    Guards,
    TrialRecord,
    compute_guards,
    fold_table,
    render_html,
    summary_lines,
)
from research.walkforward import Fold, session_numbers, walk_forward, window_panel
from strategies.space import Choice, Constraint, FloatParam, IntParam, Space
from tierlab.errors import ConfigError, TierlabError
from tierlab.log import get_logger
from tierlab.paths import tierlab_home

log = get_logger(__name__)

OBJECTIVES = {"sharpe": "sharpe", "sortino": "sortino", "calmar": "calmar", "return": "total_return"}
# Calmar/Sortino are infinite without a drawdown/downside; clip so one such fold cannot dominate.
SCORE_CLIP = 1e3
_PRIMITIVE = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class TuneConfig:
    """Everything a study run needs; picklable so worker processes rebuild their problem from it."""

    study: str = "tierlab"
    trials: int = 30
    objective: str = "sharpe"
    min_trades: int = 5
    storage: str | None = None
    workers: int = 1
    seed: int = 7
    mode: str = "default"
    start: str | None = None
    end: str | None = None
    train_days: int = 10
    test_days: int = 5
    purge_days: int = 1
    holdout_days: int = 5
    startup_trials: int = 10
    progress: bool = True
    fresh: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        for name, low in (("trials", 1), ("workers", 1), ("min_trades", 0), ("startup_trials", 0),
                          ("holdout_days", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")

    @property
    def metric(self) -> str:
        """Metric column the objective maximizes."""
        return OBJECTIVES[self.objective]


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


def open_study(cfg: TuneConfig, seed_offset: int = 0) -> optuna.Study:
    """Create or load the study on the configured storage (maximize, seeded TPE, median pruning)."""
    return optuna.create_study(
        storage=cfg.storage or default_storage(),
        study_name=cfg.study,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed + seed_offset, n_startup_trials=cfg.startup_trials),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0),
    )


_FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=_FINISHED))


def _worker(cfg: TuneConfig, factory: ProblemFactory, n_trials: int, worker: int, progress: bool) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    problem = factory(cfg)
    study = open_study(cfg, seed_offset=worker)
    study.optimize(
        make_objective(problem, cfg, worker),
        n_trials=n_trials,
        catch=(Exception,),
        show_progress_bar=progress,
        # workers on other machines may share the study: stop once it holds --trials finished trials
        callbacks=[optuna.study.MaxTrialsCallback(cfg.trials, states=_FINISHED)],
    )


def run_study(cfg: TuneConfig, factory: ProblemFactory | None = None) -> optuna.Study:
    """Run `cfg.trials` trials (split over `cfg.workers` processes) and return the study."""
    factory = factory or backtest_problem
    storage = cfg.storage or default_storage()
    cfg = TuneConfig(**{**asdict(cfg), "storage": storage})
    if cfg.fresh:
        try:
            optuna.delete_study(study_name=cfg.study, storage=storage)
        except KeyError:
            pass
    existing = _finished(open_study(cfg))  # create once, before workers race to create it
    todo = max(0, cfg.trials - existing)
    if existing:
        log.info("study_resumed", study=cfg.study, finished_trials=existing, target=cfg.trials, adding=todo,
                 reason="a study of this name exists on the storage; --trials is its size, --fresh starts over")
    if todo == 0:
        return open_study(cfg)
    shares = [todo // cfg.workers + (i < todo % cfg.workers) for i in range(cfg.workers)]
    log.info("tune_start", study=cfg.study, trials=todo, workers=cfg.workers, objective=cfg.objective,
             storage=_safe_url(storage))
    if cfg.workers == 1:
        _worker(cfg, factory, shares[0], 0, cfg.progress)
    else:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(cfg, factory, n, i, cfg.progress and i == 0))
                 for i, n in enumerate(shares) if n]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode]
        if bad:
            raise TierlabError(f"{len(bad)} tuning worker(s) exited with codes {bad}")
    return open_study(cfg)


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
    """The study's trials as plain records for the report."""
    return [
        TrialRecord(t.number, t.state.name, t.value, dict(t.params), dict(t.user_attrs))
        for t in study.get_trials(deepcopy=False)
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
    out_dir = Path(out_dir or Path("reports") / f"tune-{cfg.study}")
    out_dir.mkdir(parents=True, exist_ok=True)
    params_path = out_dir / "best_params.toml"
    problem.base.replace(**normalize(problem.space, best.params)).to_toml(params_path)
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(f"tierlab study {cfg.study}", lines, table, figures(study)))
    lines += [f"best params: {params_path}", f"report: {html_path}"]
    return StudyReport(lines, params_path, html_path, guards)


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

    base = Params.preset(cfg.mode)
    catalog = Catalog()
    if not catalog.symbols():  # only an empty catalog gets the sample: never mixed into real bars
        catalog = ensure_sample(catalog)
    start, end = cfg.start or DEFAULT_START, cfg.end or DEFAULT_END
    panel = catalog.read_panel(base.universe, start, end)
    events = catalog.read_events(start, end)
    strategy = TieredBasketStrategy(base)
    numbers = session_numbers(panel.index)
    n_sessions = int(numbers[-1]) + 1 if len(numbers) else 0
    searched = n_sessions - (cfg.holdout_days + cfg.purge_days if cfg.holdout_days else 0)
    folds = list(walk_forward(searched, cfg.train_days, cfg.test_days, cfg.purge_days))
    holdout = range(n_sessions - cfg.holdout_days, n_sessions) if cfg.holdout_days else None

    def evaluate(params: Any, sessions: range) -> WindowResult:
        sub = window_panel(panel, numbers, sessions)
        grid = run_grid(strategy, sub, [params], events=events, init_cash=INIT_CASH)
        metrics = grid.metrics.iloc[0].to_dict()
        return WindowResult(metrics, session_returns(grid.equity.iloc[:, 0], INIT_CASH))

    return Problem(strategy.search_space, strategy.constraints, base, folds, evaluate, holdout)


INIT_CASH = 10_000.0


def session_returns(equity: pd.Series, init_cash: float) -> pd.Series:
    """Return of each session from the equity at bar closes (the first against `init_cash`), by NY date."""
    days = pd.Index(ny_days(pd.DatetimeIndex(equity.index))).astype(str)
    last = equity.groupby(days.to_numpy(), sort=True).last()
    prev = last.shift(1).fillna(init_cash)
    return last / prev - 1.0


def parse_args(argv: Sequence[str] | None = None) -> TuneConfig:
    """Parse the `python -m research.tune` command line into a TuneConfig."""
    ap = argparse.ArgumentParser(prog="python -m research.tune", description=__doc__.splitlines()[0])
    d = TuneConfig()
    ap.add_argument("--study", default=None, help="study name (default tierlab-<mode>)")
    ap.add_argument("--trials", type=int, default=d.trials,
                    help="finished trials the study should hold (a re-run adds only the missing ones)")
    ap.add_argument("--objective", choices=list(OBJECTIVES), default=d.objective)
    ap.add_argument("--min-trades", type=int, default=d.min_trades, help="fewer OOS trades in a fold prunes the trial")
    ap.add_argument("--storage", default=None, help="optuna storage URL (default SQLite under TIERLAB_HOME/studies)")
    ap.add_argument("--workers", type=int, default=d.workers, help="local worker processes on the same storage")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--mode", choices=["default", "relaxed"], default=d.mode)
    ap.add_argument("--start", default=None, help="first session date (default: the sample's)")
    ap.add_argument("--end", default=None, help="last session date, inclusive (default: the sample's)")
    ap.add_argument("--train-days", type=int, default=d.train_days)
    ap.add_argument("--test-days", type=int, default=d.test_days)
    ap.add_argument("--purge-days", type=int, default=d.purge_days)
    ap.add_argument("--holdout-days", type=int, default=d.holdout_days,
                    help="last sessions kept from the optimizer and scored once for the best trial (0: none)")
    ap.add_argument("--fresh", action="store_true", help="delete an existing study of that name first")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    return TuneConfig(
        study=a.study or f"tierlab-{a.mode}", trials=a.trials, objective=a.objective, min_trades=a.min_trades,
        storage=a.storage, workers=a.workers, seed=a.seed, mode=a.mode, start=a.start, end=a.end,
        train_days=a.train_days, test_days=a.test_days, purge_days=a.purge_days, holdout_days=a.holdout_days,
        fresh=a.fresh,
        progress=not a.no_progress,
    )


def main(argv: Sequence[str] | None = None, factory: ProblemFactory | None = None) -> int:
    """CLI: run a study, print the best trial and its guards, write the params TOML and the HTML report."""
    try:
        cfg = parse_args(argv)
        factory = factory or backtest_problem
        study = run_study(cfg, factory)
        rep = report(study, factory(cfg), cfg)
    except TierlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(rep.lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
