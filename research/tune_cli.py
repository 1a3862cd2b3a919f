"""The `python -m research.tune` command line and its TuneConfig, apart from optuna and pandas.

research/tune.py parses with this module before it imports optuna (about 3 s), so `--help` and a
mistyped flag answer at once; tune.py re-exports everything here.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tierlab.errors import ConfigError

OBJECTIVES = {"sharpe": "sharpe", "sortino": "sortino", "calmar": "calmar", "return": "total_return"}


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
    out: str = "reports"
    extra: Mapping[str, Any] = field(default_factory=dict)
    llm: str = "off"  # --llm off|recorded:FILE: each trial's windows through the LLM gate (research.llm)

    def __post_init__(self) -> None:
        if self.llm != "off":  # only then load research.llm (numpy, pandas): --help stays light
            from research.llm import parse_policy

            parse_policy(self.llm)  # a bad value or a missing file: ConfigError naming --llm
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


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments, every one with its help text."""
    ap = argparse.ArgumentParser(
        prog="python -m research.tune",
        description="Optuna studies over the strategy's declared search space, scored out of sample by "
                    "walk-forward folds.",
        epilog="environment: TIERLAB_<FIELD>=value overrides a base parameter (e.g. TIERLAB_COOLDOWN_S=600), "
               "TIERLAB_MODE picks the preset when --mode is not given; TIERLAB_HOME picks the catalog and "
               "the default study storage.")
    d = TuneConfig()
    ap.add_argument("--study", default=None, help="study name (default tierlab-<mode>)")
    ap.add_argument("--trials", type=int, default=d.trials,
                    help=f"finished trials the study should hold (a re-run adds only the missing ones; default {d.trials})")
    ap.add_argument("--objective", choices=list(OBJECTIVES), default=d.objective,
                    help=f"out-of-sample score to maximize, averaged over the folds (default {d.objective})")
    ap.add_argument("--min-trades", type=int, default=d.min_trades,
                    help=f"fewer OOS trades in a fold prunes the trial (default {d.min_trades})")
    ap.add_argument("--storage", default=None,
                    help="optuna storage: an RDB URL (postgresql+psycopg://...), redis://HOST:PORT/DB or a journal "
                         "file path (default SQLite under TIERLAB_HOME/studies)")
    ap.add_argument("--workers", type=int, default=d.workers,
                    help=f"local worker processes on the same storage (default {d.workers})")
    ap.add_argument("--seed", type=int, default=d.seed,
                    help=f"sampler seed: the same seed on a fresh study gives the same trials (default {d.seed})")
    ap.add_argument("--mode", choices=["default", "relaxed"], default=None,
                    help="preset of the base parameters (default: TIERLAB_MODE, else default)")
    ap.add_argument("--start", default=None, help="first session date (default: the sample's)")
    ap.add_argument("--end", default=None, help="last session date, inclusive (default: the sample's)")
    ap.add_argument("--train-days", type=int, default=d.train_days,
                    help=f"sessions in each fold's training window (default {d.train_days})")
    ap.add_argument("--test-days", type=int, default=d.test_days,
                    help=f"sessions in each fold's out-of-sample test window (default {d.test_days})")
    ap.add_argument("--purge-days", type=int, default=d.purge_days,
                    help=f"sessions dropped between a training and its test window (default {d.purge_days})")
    ap.add_argument("--holdout-days", type=int, default=d.holdout_days,
                    help="last sessions kept from the optimizer and scored once for the best trial (0: none)")
    ap.add_argument("--fresh", action="store_true", help="delete an existing study of that name first")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and CI)")
    ap.add_argument("--llm", default="off", metavar="off|recorded:FILE",
                    help="LLM gate per trial: off (default) or recorded:FILE (answers replayed from the file)")
    ap.add_argument("--out", default=d.out,
                    help="parent of the run folders (default: reports); each study run writes its own folder")
    return ap


def parse_args(argv: Sequence[str] | None = None) -> TuneConfig:
    """Parse the `python -m research.tune` command line into a TuneConfig (the mode: --mode, TIERLAB_MODE, default)."""
    a = build_parser().parse_args(argv)
    mode = a.mode or os.environ.get("TIERLAB_MODE", "").strip() or "default"  # a bad one: Params.load names it
    return TuneConfig(
        study=a.study or f"tierlab-{mode}", trials=a.trials, objective=a.objective, min_trades=a.min_trades,
        storage=a.storage, workers=a.workers, seed=a.seed, mode=mode, start=a.start, end=a.end,
        train_days=a.train_days, test_days=a.test_days, purge_days=a.purge_days, holdout_days=a.holdout_days,
        fresh=a.fresh, progress=not a.no_progress, out=a.out, llm=a.llm,
    )
