"""SPEC §8 rates on hand-made runs: flip-flop rate per actionable signal, token overflow on one basis
for the hours and the total, and non-finite figures shown the same way everywhere with a reason."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from research import kpis
from strategies import codes
from strategies.base import ORDER_DTYPE, RunResult

# 14:30 UTC = 10:30 New York (EDT) on 2024-10-21: bars 0..29 are the 10:00 hour, 30..89 the 11:00 hour
INDEX = pd.date_range("2024-10-21 14:30", periods=90, freq="1min", tz="UTC")


def _run(decisions: np.ndarray) -> RunResult:
    T = len(INDEX)
    counts = np.bincount(decisions.ravel(), minlength=codes.N_DECISIONS)[None].astype(np.int64)
    eq = np.full((T, 1), 1000.0)
    return RunResult(index=INDEX, symbols=("AAA", "BBB"), init_cash=1000.0, orders=np.array([], dtype=ORDER_DTYPE),
                     equity=eq, cash=eq.copy(), reason_counts=counts, decisions=decisions[None], scores=None,
                     params=[])


def _no_trades(run: RunResult) -> pd.DataFrame:
    z = np.ones((len(INDEX), 2))
    return kpis.round_trips(run, z, z, z)


def test_flip_flop_rate_is_flip_flops_per_actionable_signal() -> None:
    d = np.zeros((90, 2), dtype=np.int8)
    # AAA: up (actionable) 10:30, down (evidence) 10:33 -> flip; up again 10:36 -> flip (3 min after)
    d[0, 0], d[3, 0], d[6, 0] = codes.ACTIONABLE, codes.EVIDENCE, codes.ACTIONABLE
    # BBB: up 10:40, up 10:45 (same direction), down 11:10 (25 min later: not within 10 min)
    d[10, 1], d[15, 1], d[40, 1] = codes.ACTIONABLE, codes.ACTIONABLE, codes.EXIT_SIGNAL
    # 11:30 AAA evidence after 54 min: no flip; 11:35 AAA actionable 5 min after it: a flip
    d[60, 0], d[65, 0] = codes.EVIDENCE, codes.ACTIONABLE
    d[20:25, 1] = codes.BELOW_CUTOFF  # suppressed decisions are not signals with a direction
    run = _run(d)
    s = kpis.signal_kpis(run, _no_trades(run), 0)
    actionable = 5  # rows 0, 6, 10, 15, 65
    assert s["actionable"] == actionable and s["flip_flops"] == 3
    assert s["flip_flop_rate"] == pytest.approx(3 / actionable)  # not 3 / 8 signals with a direction
    h = kpis.hourly_kpis(run, _no_trades(run), 0)
    assert h.loc[10, "flip_flops"] == 2 and h.loc[10, "actionable"] == 4
    assert h.loc[10, "flip_flop_rate"] == pytest.approx(2 / 4)
    assert h.loc[11, "flip_flop_rate"] == pytest.approx(1 / 1)
    assert h["flip_flops"].sum() == s["flip_flops"] and h["actionable"].sum() == s["actionable"]


def test_flip_flop_rate_without_actionable_signals_is_nan_with_a_reason() -> None:
    d = np.zeros((90, 2), dtype=np.int8)
    d[0, 0], d[2, 0] = codes.EXIT_SIGNAL, codes.EVIDENCE
    run = _run(d)
    s = kpis.signal_kpis(run, _no_trades(run), 0)
    assert np.isnan(s["flip_flop_rate"])
    why = kpis.nonfinite_reasons({}, s)
    assert kpis.fmt_value("flip_flop_rate", s["flip_flop_rate"], why["flip_flop_rate"]) == "n/a (no actionable signals)"


def test_hourly_token_overflow_rate_uses_the_totals_basis_and_adds_up() -> None:
    d = np.zeros((90, 2), dtype=np.int8)
    d[0:10, 0] = codes.BELOW_CUTOFF  # 10:xx: 10 + 10 wanted, 2 found no token
    d[0:8, 1] = codes.BELOW_CUTOFF
    d[8:10, 1] = codes.TOKEN
    d[30:36, 0] = codes.BELOW_CUTOFF  # 11:xx: 6 + 4 wanted, 3 found no token
    d[30:31, 1] = codes.ACTIONABLE
    d[31:34, 1] = codes.TOKEN
    run = _run(d)
    s = kpis.signal_kpis(run, _no_trades(run), 0)
    h = kpis.hourly_kpis(run, _no_trades(run), 0)
    assert s["token_overflow_rate"] == pytest.approx(5 / 30)
    assert h.loc[10, "token_overflow_rate"] == pytest.approx(2 / 20)
    assert h.loc[11, "token_overflow_rate"] == pytest.approx(3 / 10)
    # the same basis: hourly overflows and wanted evaluations add up to the total's
    assert h["token_overflows"].sum() / h["signals_generated"].sum() == pytest.approx(s["token_overflow_rate"])


def test_nonfinite_figures_read_the_same_with_a_reason() -> None:
    m = {"n_trades": 3, "profit_factor": np.inf, "win_rate": 1.0, "sharpe": np.nan, "n_sessions": 1,
         "calmar": np.nan}
    why = kpis.nonfinite_reasons(m)
    assert kpis.fmt_value("profit_factor", np.inf, why["profit_factor"]) == "n/a (inf, no losing trades)"
    assert why["sharpe"] == "fewer than 2 sessions" and why["calmar"] == "no drawdown"
    none = kpis.nonfinite_reasons({"n_trades": 0, "win_rate": np.nan, "profit_factor": np.nan})
    assert none == {"win_rate": "no closed trades", "profit_factor": "no closed trades"}
    assert kpis.fmt_value("total_return", 0.0432) == "4.32%"
    assert kpis.fmt_value("fees", 814.237) == "$814.24" and kpis.fmt_value("n_trades", 78361) == "78,361"


def test_sharpe_standard_error_risk_free_and_short_sample_warning() -> None:
    rng = np.random.default_rng(7)
    r = rng.normal(0.001, 0.01, 500)
    f = kpis.ratio_figures(r)
    sr_d = r.mean() / r.std(ddof=1)
    assert f["sharpe"][0] == pytest.approx(sr_d * np.sqrt(252))
    assert f["sharpe_se"][0] == pytest.approx(np.sqrt((1 + sr_d**2 / 2) / 500) * np.sqrt(252))
    assert kpis.ratio_figures(r, risk_free=0.05)["sharpe"][0] < f["sharpe"][0]
    assert "5 sessions" in kpis.short_sample_warning(5) and kpis.short_sample_warning(252) is None


def test_numpy_ratios_equal_vectorbts() -> None:
    """Sharpe and Sortino moved out of vectorbt (start-up time), not away from its formulas."""
    import vectorbt  # noqa: F401  (registers .vbt)

    rng = np.random.default_rng(3)
    rets = pd.DataFrame(rng.normal(0.0005, 0.01, (300, 3)))
    acc = rets.vbt.returns(freq="1D", year_freq="252D")
    f = kpis.ratio_figures(rets.to_numpy())
    np.testing.assert_allclose(f["sharpe"], np.asarray(acc.sharpe_ratio()), rtol=1e-12)
    np.testing.assert_allclose(f["sortino"], np.asarray(acc.sortino_ratio()), rtol=1e-12)
