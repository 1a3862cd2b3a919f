"""The overfitting guards of a finished study and its HTML report (no optuna import: plain records in).

`tune.py` turns trials into `TrialRecord`s and Optuna's plots into plotly figures; this module
computes the guards from the records and lays everything out:
- in-sample vs out-of-sample metric per walk-forward fold for the best trial;
- the deflated Sharpe ratio of the best trial's out-of-sample session returns, deflated by the
  number of trials that were backtested (complete + pruned after a fold) and the variance of the
  complete trials' out-of-sample Sharpe ratios;
- the probability of backtest overfitting by CSCV over the complete trials' out-of-sample session
  returns (each trial's test windows, concatenated in time).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from research.overfit import (
    DeflatedSharpe,
    PBOResult,
    default_n_splits,
    deflated_sharpe_from_returns,
    pbo_cscv,
)
from tierlab.errors import ConfigError

DSR_SIGNIFICANT = 0.95  # a deflated Sharpe ratio below this is reported as not significant
HOLDOUT_SHARPE_GAP = 1.0  # holdout vs out-of-sample Sharpe further apart than this is a warning


@dataclass(frozen=True)
class TrialRecord:
    """One trial as plain data: state name, objective value, parameters and user attributes."""

    number: int
    state: str
    value: float | None
    params: Mapping[str, Any]
    user_attrs: Mapping[str, Any]

    @property
    def oos_returns(self) -> pd.Series:
        """Out-of-sample return per test session (empty unless the trial completed every fold)."""
        r = self.user_attrs.get("oos_returns") or {}
        return pd.Series(r, dtype=float).sort_index()


@dataclass(frozen=True)
class Guards:
    """Overfitting guards of a study; a guard that cannot be computed is None with `notes` saying why."""

    n_trials: int
    n_backtested: int
    n_complete: int
    dsr: DeflatedSharpe | None
    pbo: PBOResult | None
    notes: tuple[str, ...]


def compute_guards(records: Sequence[TrialRecord], best: int) -> Guards:
    """DSR of trial `best` and PBO over the complete trials, from their out-of-sample session returns."""
    complete = [r for r in records if r.state == "COMPLETE" and len(r.oos_returns)]
    backtested = [r for r in records if r.state in ("COMPLETE", "PRUNED") and r.user_attrs.get("folds")]
    notes: list[str] = []
    dsr = pbo = None
    if not complete:
        return Guards(len(records), len(backtested), 0, None, None, ("no complete trial",))
    mat = pd.concat({r.number: r.oos_returns for r in complete}, axis=1).dropna()
    by_num = {r.number: r for r in complete}
    if best not in by_num:
        notes.append(f"trial {best} has no out-of-sample returns; no DSR")
    else:
        srs = (mat.mean() / mat.std(ddof=1).replace(0.0, np.nan)).fillna(0.0).to_numpy()
        # Trials pruned after a fold were tried too: they count in N, with the complete trials' spread.
        try:
            dsr = deflated_sharpe_from_returns(mat[best].to_numpy(), srs, n_trials=len(backtested))
        except ConfigError as exc:
            notes.append(f"DSR not computed: {exc}")
    if len(complete) < 2:
        notes.append("PBO needs at least 2 complete trials")
    else:
        try:
            pbo = pbo_cscv(mat.to_numpy(), n_splits=default_n_splits(len(mat)))
        except ConfigError as exc:
            notes.append(f"PBO not computed: {exc}")
    return Guards(len(records), len(backtested), len(complete), dsr, pbo, tuple(notes))


def fold_table(folds: Sequence[Mapping[str, Any]], columns: Sequence[str] = ("sharpe", "total_return", "n_trades")) -> pd.DataFrame:
    """In-sample vs out-of-sample metrics per fold, one row per fold (is_x / oos_x columns side by side)."""
    df = pd.DataFrame(list(folds)).set_index("fold")
    cols = [f"{side}_{c}" for c in columns for side in ("is", "oos") if f"{side}_{c}" in df.columns]
    out = df[cols].copy()
    for c in cols:
        if c.endswith("n_trades"):
            out[c] = out[c].astype("Int64")
    return out


def summary_lines(best: TrialRecord, table: pd.DataFrame, guards: Guards, objective: str) -> list[str]:
    """The plain-text summary the CLI prints: best trial, per-fold IS/OOS, DSR and PBO."""
    lines = [
        f"best trial #{best.number}: out-of-sample {objective} (mean over folds) = {best.value:.4f}",
        "  params: " + ", ".join(f"{k}={_short(v)}" for k, v in best.params.items()),
        "  in-sample vs out-of-sample per fold:",
    ]
    lines += ["    " + ln for ln in table.to_string(float_format=lambda x: f"{x:.4f}").splitlines()]
    lines.append(f"  trials: {guards.n_trials} run, {guards.n_backtested} backtested, {guards.n_complete} complete")
    if guards.dsr is not None:
        d = guards.dsr
        verdict = "" if d.dsr >= DSR_SIGNIFICANT else f" - NOT significant (below {DSR_SIGNIFICANT})"
        lines.append(
            f"  deflated Sharpe ratio: {d.dsr:.3f}{verdict} (daily OOS Sharpe {d.sharpe:.3f} vs expected max of "
            f"{d.n_trials} trials {d.benchmark:.3f}; {d.n_obs} sessions)"
        )
    if guards.pbo is not None:
        p = guards.pbo
        dropped = (f"; the first {p.n_dropped} session(s) left out so the blocks are equal"
                   if p.n_dropped else "")
        lines.append(
            f"  probability of backtest overfitting (CSCV, {p.n_splits} blocks of {p.block_size} sessions, "
            f"{p.n_combinations} splits{dropped}): {p.pbo:.3f}; P(OOS loss of the IS winner) {p.prob_oos_loss:.3f}"
        )
    lines += [f"  note: {n}" for n in guards.notes]
    return lines


def holdout_lines(best: TrialRecord, holdout: Mapping[str, Any], metric: str) -> list[str]:
    """A warning when the holdout disagrees with the best trial's out-of-sample score.

    Disagreement: the objective (or the Sharpe ratio) has the opposite sign on the holdout, or the
    holdout Sharpe is more than `HOLDOUT_SHARPE_GAP` from the mean out-of-sample Sharpe over the folds.
    """
    folds = best.user_attrs.get("folds") or []
    oos = {"sharpe": _mean([f.get("oos_sharpe") for f in folds]), metric: best.value}
    hold = {k: _finite(holdout.get(k)) for k in oos}
    why = [f"{k} {hold[k]:.2f} on the holdout vs {oos[k]:.2f} out of sample (opposite signs)"
           for k in dict.fromkeys((metric, "sharpe"))
           if hold[k] is not None and oos[k] is not None and hold[k] * oos[k] < 0]
    h, o = hold["sharpe"], oos["sharpe"]
    if h is not None and o is not None and abs(h - o) > HOLDOUT_SHARPE_GAP:
        why.append(f"sharpe {h:.2f} on the holdout vs {o:.2f} out of sample ({abs(h - o):.2f} apart, "
                   f"more than {HOLDOUT_SHARPE_GAP:g})")
    if not why:
        return []
    return [f"  WARNING: the holdout disagrees with the out-of-sample score: {'; '.join(why)}; "
            "the best trial may be fitted to the test windows"]


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _mean(values: Sequence[Any]) -> float | None:
    vals = [f for f in (_finite(v) for v in values) if f is not None]
    return float(np.mean(vals)) if vals else None


def render_html(title: str, lines: Sequence[str], table: pd.DataFrame, figures: Mapping[str, Any]) -> str:
    """A self-contained HTML page: summary, fold table and plotly figures (plotly.js embedded once)."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}pre{background:#f6f6f6;padding:1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
        "<h2>Best trial and overfitting guards</h2><pre>" + html.escape("\n".join(_without_fold_table(lines)))
        + "</pre>",
        "<h2>In-sample vs out-of-sample per fold</h2>",
        table.to_html(float_format=lambda x: f"{x:.4f}", na_rep="-"),
    ]
    first = True
    for name, fig in figures.items():
        _fit(name, fig)
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=first, default_width="100%"))
        first = False
    parts.append("</body></html>")
    return "\n".join(parts)


def _without_fold_table(lines: Sequence[str]) -> list[str]:
    """The summary without the text copy of the fold table (the page shows it once, as a table)."""
    out: list[str] = []
    skipping = False
    for ln in lines:
        if ln.strip() == "in-sample vs out-of-sample per fold:":
            skipping = True
            out.append(ln.rstrip(":") + ": the table below")
            continue
        if skipping and ln.startswith("    "):
            continue
        skipping = False
        out.append(ln)
    return out


def _fit(name: str, fig: Any) -> None:
    """Optuna's figures on the page: slices fit the page width; the pruning plot's x axis is folds."""
    if "Slice" in name:
        fig.update_layout(width=None, autosize=True)
    if "pruning" in name.lower() or "intermediate" in name.lower():
        fig.update_xaxes(title_text="walk-forward fold", dtick=1)
        fig.update_yaxes(title_text="running mean of the out-of-sample score")


def _short(v: Any) -> str:
    if isinstance(v, float) and math.isfinite(v):
        return f"{v:.6g}"
    return repr(v)
