"""The mode-comparison HTML report: verdicts with bootstrap CIs, per-session and per-hour tables,
the rollback-trigger timeline and the modes' equity curves overlaid (one offline file)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

NY = "America/New_York"
HOURLY_KEYS = ("signals_generated", "actionable", "strong_signals", "flip_flops", "flip_flop_rate",
               "token_overflow_rate", "direction_lock_hits", "llm_calls", "stop_out_rate", "mae_median",
               "mfe_median")


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "n/a" if not np.isfinite(v) else f"{v:,.4f}"
    if isinstance(v, pd.Timestamp):
        return str(v.tz_convert(NY) if v.tz else v.date())
    return html.escape(str(v))


def _table(df: pd.DataFrame, title: str, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for rec in df.itertuples(index=False):
        cells = []
        for c, v in zip(df.columns, rec, strict=True):
            cls = f' class="v-{str(v).split()[0]}"' if c == "verdict" else ""
            cells.append(f"<td{cls}>{_fmt(v)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<h2>{html.escape(title)}</h2>\n<div class="scroll"><table class="kpi" id="{table_id}">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def equity_figure(cmp: Any) -> Any:
    """Every mode's equity curve on one chart (New York time, nights and weekends removed)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    x = cmp.equity.index.tz_convert(NY).tz_localize(None)
    step = max(1, len(x) // 5000)
    for mode in cmp.equity.columns:
        fig.add_trace(go.Scatter(x=x[::step], y=cmp.equity[mode].to_numpy()[::step], name=str(mode),
                                 line={"width": 1.2}))
    if len(cmp.triggers) and "time" in cmp.triggers:
        for mode, g in cmp.triggers.groupby("mode"):
            t = pd.DatetimeIndex(g["time"])
            y = cmp.equity[mode].reindex(t, method="ffill").to_numpy()
            fig.add_trace(go.Scatter(x=t.tz_convert(NY).tz_localize(None), y=y, mode="markers",
                                     name=f"{mode} rollback trigger", marker={"symbol": "x", "size": 10}))
    fig.update_xaxes(rangebreaks=[{"bounds": ["sat", "mon"]}, {"bounds": [16, 9.5], "pattern": "hour"}])
    fig.update_layout(title="Equity by mode", height=420, margin={"t": 50, "b": 30}, yaxis_title="equity ($)")
    return fig


def write_compare_report(cmp: Any, path: str | Path, title: str, provenance: dict[str, Any]) -> Path:
    """Write the comparison report to `path` (self-contained HTML) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = equity_figure(cmp).to_html(full_html=False, include_plotlyjs=True, div_id="equity")
    prov = pd.DataFrame({"what": list(provenance), "value": [str(v) for v in provenance.values()]})
    verdicts = cmp.table[["mode", "baseline", "kpi", "baseline_mean", "mode_mean", "diff_mean", "ci_low",
                          "ci_high", "n_sessions", "verdict"]]
    hourly = cmp.hourly.groupby(["mode", "ny_hour"])[[k for k in HOURLY_KEYS if k in cmp.hourly]].mean().reset_index()
    trig = cmp.triggers if len(cmp.triggers) else pd.DataFrame({"timeline": ["no rollback trigger fired"]})
    sections = [
        _table(prov, "What ran", "provenance"),
        _table(verdicts, f"Differences against {cmp.baseline} (mean per session, 95% bootstrap CI)", "verdicts"),
        fig,
        _table(trig, "Rollback trigger timeline", "triggers"),
        _table(cmp.sessions, "KPIs per session", "sessions"),
        _table(hourly, "KPIs per New York hour (mean over sessions)", "hourly"),
    ]
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em;max-width:1500px}}
.scroll{{overflow-x:auto}} table.kpi{{border-collapse:collapse;font-size:12px}}
table.kpi td,table.kpi th{{padding:2px 8px;text-align:right;white-space:nowrap}}
table.kpi tr:nth-child(even){{background:#f4f4f4}} .v-better{{color:#2ca02c}} .v-worse{{color:#d62728}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>Each KPI is computed per session for every mode; a difference is the mode minus the baseline in the
same session, its interval a percentile bootstrap over sessions. "not distinguishable" means the
interval holds 0. Times are America/New_York.</p>
{''.join(sections)}
</body></html>
"""
    path.write_text(doc, encoding="utf-8")
    return path
