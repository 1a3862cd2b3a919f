"""The backtest HTML report: one self-contained file (plotly.js inlined, opens offline).

Sections: summary KPIs and SPEC §8 signal KPIs, the vectorbt portfolio stats, equity and drawdown
(from the vectorbt replay), trades on price per symbol, suppression reasons over time, basket
routing events (orders with reason basket_entry/basket_exit), and the per-hour KPI table.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from strategies import codes

NY = "America/New_York"
MAX_LINE_POINTS = 4000  # price lines are thinned to this many points; trade markers are exact
_COLORS = {
    "entry": "#2ca02c", "signal": "#1f77b4", "exit_signal": "#d62728", "stop": "#9467bd",
    "take_profit": "#17becf", "flatten": "#7f7f7f", "max_hold": "#8c564b", "basket_entry": "#ff7f0e",
    "basket_exit": "#bcbd22",
}


def _ny(index: pd.DatetimeIndex | pd.Series) -> Any:
    return pd.DatetimeIndex(index).tz_convert(NY).tz_localize(None)


def equity_figure(bt: Any) -> go.Figure:
    """Equity (vectorbt value at each bar close) and drawdown, on a session-gap-free axis."""
    value = bt.replay.value().iloc[:, 0]
    dd = value / np.maximum(value.cummax(), bt.result.init_cash) - 1.0
    x = _ny(value.index)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.04,
                        subplot_titles=("Equity", "Drawdown"))
    fig.add_trace(go.Scatter(x=x, y=value.to_numpy(), name="equity", line={"width": 1.2}), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=dd.to_numpy(), name="drawdown", fill="tozeroy",
                             line={"width": 0.8, "color": "#d62728"}), row=2, col=1)
    fig.update_yaxes(tickformat=".1%", row=2, col=1)
    _session_axis(fig)
    fig.update_layout(height=520, margin={"t": 40, "b": 30}, showlegend=False)
    return fig


def _session_axis(fig: go.Figure) -> None:
    fig.update_xaxes(rangebreaks=[{"bounds": ["sat", "mon"]}, {"bounds": [16, 9.5], "pattern": "hour"}])


def trades_figure(bt: Any) -> go.Figure | None:
    """One price panel per traded symbol with every fill marked by side and reason."""
    orders = bt.orders
    if orders.empty:
        return None
    syms = [s for s in bt.panel.symbols if s in set(orders["symbol"])]
    fig = make_subplots(rows=len(syms), cols=1, shared_xaxes=True, subplot_titles=syms,
                        vertical_spacing=min(0.06, 0.3 / len(syms)))
    x_all = _ny(bt.panel.index)
    step = max(1, len(x_all) // MAX_LINE_POINTS)
    shown: set[str] = set()
    for i, s in enumerate(syms, start=1):
        close = bt.panel.close[:, bt.panel.col(s)]
        fig.add_trace(go.Scatter(x=x_all[::step], y=close[::step], name=s, showlegend=False,
                                 line={"width": 0.8, "color": "#444"}), row=i, col=1)
        o = orders[orders["symbol"] == s]
        for reason, g in o.groupby("reason"):
            for side, sym in (("buy", "triangle-up"), ("sell", "triangle-down")):
                gs = g[g["side"] == side]
                if gs.empty:
                    continue
                key = f"{side} {reason}"
                fig.add_trace(go.Scatter(
                    x=_ny(gs["time"]), y=gs["price"], mode="markers", name=key, legendgroup=key,
                    showlegend=key not in shown, marker={"symbol": sym, "size": 8, "color": _COLORS.get(reason, "#000")},
                    text=[f"{q:g} @ {p:.2f}" for q, p in zip(gs["qty"], gs["price"], strict=True)],
                ), row=i, col=1)
                shown.add(key)
    _session_axis(fig)
    fig.update_layout(height=max(300, 220 * len(syms)), margin={"t": 40, "b": 30}, title="Trades on price")
    return fig


def suppression_figure(bt: Any) -> go.Figure | None:
    """Decisions per New York session day, stacked by suppression reason (plus actionable)."""
    d = bt.decisions
    if d.empty:
        return None
    names = [codes.DECISION_NAMES[c] for c in codes.SUPPRESSION_CODES] + ["actionable", "exit_signal"]
    d = d[d["reason"].isin(names)]
    if d.empty:
        return None
    day = _ny(d["time"]).normalize()
    table = pd.crosstab(day, d["reason"].to_numpy())
    fig = go.Figure([go.Bar(x=table.index, y=table[c], name=c) for c in table.columns])
    fig.update_layout(barmode="stack", height=380, title="Signals by reason per session day",
                      margin={"t": 40, "b": 30}, xaxis={"rangebreaks": [{"bounds": ["sat", "mon"]}]})
    return fig


def basket_figure(bt: Any) -> go.Figure | None:
    """Basket routing events: inverse-ETF entries and exits over time."""
    o = bt.orders[bt.orders["reason"].isin(["basket_entry", "basket_exit"])]
    if o.empty:
        return None
    fig = go.Figure()
    for reason, g in o.groupby("reason"):
        fig.add_trace(go.Scatter(x=_ny(g["time"]), y=g["symbol"], mode="markers", name=reason,
                                 marker={"size": 10, "color": _COLORS[reason],
                                         "symbol": "triangle-up" if reason == "basket_entry" else "triangle-down"}))
    fig.update_layout(height=300, title="Basket routing events", margin={"t": 40, "b": 30})
    _session_axis(fig)
    return fig


def _table(rows: dict[str, Any] | pd.DataFrame, title: str) -> str:
    df = pd.DataFrame({"value": pd.Series(rows)}) if isinstance(rows, dict) else rows
    body = df.to_html(float_format=lambda v: f"{v:,.4f}", na_rep="n/a", border=0, classes="kpi")
    return f"<h2>{html.escape(title)}</h2>\n{body}"


def vbt_stats(bt: Any) -> pd.DataFrame:
    """vectorbt's accounting of the replay (values, trades, fees, drawdown depth).

    vectorbt annualizes by bar time, which on a regular-hours minute grid disagrees with calendar
    time; the ratios (Sharpe, Sortino, Calmar, Omega) and durations are therefore left to the KPI
    table above, which applies vectorbt's returns accessor to daily returns.
    """
    stats = bt.portfolio.stats(column=bt.replay.sets[0])
    keep = [k for k in stats.index if not any(w in k for w in _BAR_TIME_STATS)]
    shown = [v.tz_convert("America/New_York") if isinstance(v, pd.Timestamp) and v.tz else v for v in stats[keep]]
    return pd.DataFrame({"vectorbt": [str(v) for v in shown]}, index=keep)


_BAR_TIME_STATS = ("Period", "Duration", "Sharpe", "Sortino", "Calmar", "Omega")


def write_report(bt: Any, path: str | Path, title: str = "tierlab backtest") -> Path:
    """Write the self-contained HTML report of a BacktestResult to `path` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figures = [f for f in (equity_figure(bt), trades_figure(bt), suppression_figure(bt), basket_figure(bt)) if f]
    parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"fig{i}") for i, f in enumerate(figures)]
    supp = bt.suppression_table().set_index("reason")
    sections = [
        parts[0],
        _table({k: bt.metrics[k] for k in bt.metrics}, "Performance"),
        _table(bt.signals, "Signals (SPEC §8), total"),
        _table(supp, "Suppression breakdown"),
        *parts[1:],
        _table(bt.hourly, "KPIs per New York hour"),
        _table(vbt_stats(bt), "vectorbt portfolio stats"),
    ]
    if bt.strategy and hasattr(bt.params, "model_dump"):
        sections.append(_table({k: str(v) for k, v in bt.params.model_dump().items()}, "Parameters"))
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em;max-width:1400px}}
table.kpi{{border-collapse:collapse;font-size:13px}} table.kpi td,table.kpi th{{padding:2px 10px;text-align:right}}
table.kpi tr:nth-child(even){{background:#f4f4f4}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Fills: decision at a bar's close, market fill at the next bar's open plus slippage; stops and
take-profits inside later bars (strategies/fills.py). Times are America/New_York.</p>
{''.join(sections)}
</body></html>
"""
    path.write_text(doc, encoding="utf-8")
    return path
