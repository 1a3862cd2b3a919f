"""The study summary: the DSR's trial count, the significance mark, the holdout warning, the PBO blocks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from research.overfit import DeflatedSharpe, expected_max_sharpe, pbo_cscv
from research.tune_report import Guards, TrialRecord, compute_guards, holdout_lines, summary_lines


def _record(number: int, state: str, returns: dict[str, float] | None = None, folds: int = 3,
            value: float | None = None, oos_sharpe: float = 1.0) -> TrialRecord:
    attrs: dict = {"folds": [{"fold": k, "oos_sharpe": oos_sharpe} for k in range(folds)]} if folds else {}
    if returns is not None:
        attrs["oos_returns"] = returns
    return TrialRecord(number, state, value, {"x": number}, attrs)


def _norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_the_dsr_counts_every_backtested_trial_not_only_the_complete_ones() -> None:
    rng = np.random.default_rng(2)
    days = [f"2024-01-{d:02d}" for d in range(1, 21)]
    rets = {k: dict(zip(days, rng.normal(0.001 * k, 0.01, 20), strict=True)) for k in range(3)}
    recs = [_record(k, "COMPLETE", rets[k], value=float(k)) for k in range(3)]
    recs += [_record(10 + k, "PRUNED", folds=1) for k in range(7)]  # pruned after a fold: backtested
    recs += [_record(20 + k, "PRUNED", folds=0) for k in range(5)]  # infeasible: never backtested
    g = compute_guards(recs, best=2)
    assert (g.n_trials, g.n_backtested, g.n_complete) == (15, 10, 3)
    assert g.dsr is not None and g.dsr.n_trials == 10
    # the same number by hand: PSR against the expected maximum of 10 trials with the complete trials' spread
    m = pd.DataFrame(rets)
    srs = (m.mean() / m.std(ddof=1)).to_numpy()
    r = m[2].to_numpy()
    sr = r.mean() / r.std(ddof=1)
    z = (r - r.mean()) / r.std(ddof=0)
    skew, kurt = float(np.mean(z**3)), float(np.mean(z**4))
    sr0 = expected_max_sharpe(10, float(np.var(srs, ddof=1)))
    want = _norm_cdf((sr - sr0) * math.sqrt(len(r) - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2))
    assert g.dsr.dsr == pytest.approx(want, abs=1e-9)
    assert g.dsr.benchmark > expected_max_sharpe(3, float(np.var(srs, ddof=1)))


def _guards(dsr: float) -> Guards:
    d = DeflatedSharpe(dsr, 0.1, 0.05, 20, 10, 0.0, 3.0)
    return Guards(10, 10, 3, d, None, ())


@pytest.mark.parametrize(("dsr", "significant"), [(0.949, False), (0.2, False), (0.95, True), (0.999, True)])
def test_a_dsr_below_095_is_marked_not_significant(dsr: float, significant: bool) -> None:
    best = _record(1, "COMPLETE", value=1.0)
    table = pd.DataFrame({"oos_sharpe": [1.0]}, index=pd.Index([0], name="fold"))
    line = next(ln for ln in summary_lines(best, table, _guards(dsr), "sharpe") if "deflated Sharpe" in ln)
    assert f"{dsr:.3f}" in line
    assert ("NOT significant" in line) is (not significant)


@pytest.mark.parametrize(
    ("oos", "hold", "warned"),
    [
        (1.5, 1.0, False),  # same sign, 0.5 apart
        (1.5, 0.6, False),  # 0.9 apart
        (1.5, 0.4, True),  # 1.1 apart
        (0.3, -0.2, True),  # opposite signs, only 0.5 apart
        (-0.3, 0.2, True),
        (-1.0, -1.5, False),
        (2.0, float("nan"), False),  # undefined on the holdout: nothing to compare
    ],
)
def test_the_summary_warns_when_the_holdout_disagrees(oos: float, hold: float, warned: bool) -> None:
    best = _record(1, "COMPLETE", value=oos, oos_sharpe=oos)
    lines = holdout_lines(best, {"sharpe": hold, "n_trades": 9}, "sharpe")
    assert bool(lines) is warned
    if warned:
        assert len(lines) == 1 and "WARNING: the holdout disagrees with the out-of-sample score" in lines[0]
        assert f"{hold:.2f}" in lines[0] and f"{oos:.2f}" in lines[0]


def test_another_objective_warns_on_its_own_sign_and_on_the_sharpe_gap() -> None:
    best = _record(1, "COMPLETE", value=0.8, oos_sharpe=0.5)  # calmar 0.8 out of sample
    assert holdout_lines(best, {"calmar": -0.1, "sharpe": 0.4}, "calmar")  # calmar flips sign
    assert holdout_lines(best, {"calmar": 0.5, "sharpe": 2.0}, "calmar")  # sharpe 1.5 apart
    assert not holdout_lines(best, {"calmar": 0.5, "sharpe": 0.9}, "calmar")


def test_the_summary_says_when_pbo_left_sessions_out() -> None:
    rng = np.random.default_rng(0)
    pbo = pbo_cscv(rng.normal(size=(13, 4)), n_splits=4)
    best = _record(1, "COMPLETE", value=1.0)
    table = pd.DataFrame({"oos_sharpe": [1.0]}, index=pd.Index([0], name="fold"))
    lines = summary_lines(best, table, Guards(4, 4, 4, None, pbo, ()), "sharpe")
    line = next(ln for ln in lines if "probability of backtest overfitting" in ln)
    assert "4 blocks of 3 sessions" in line and "the first 1 session(s) left out" in line
