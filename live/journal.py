"""What a live run did, in the backtest's schema: orders (from the broker's fills) and decisions.

`broker_orders` reads every filled order (bracket legs included) from the broker, the truth;
`kernel_orders` gives the kernel's own fills (a dry run, AUTO_MODE=0, sends nothing but the kernel
still books its fills); `decisions_frame` turns the runner's per-bar records into the rows
`RunResult.decisions_frame` gives (time, symbol, reason, score); `tokens_frame` and
`triggers_table` are the per-bar token counts and the session events (rollback triggers) the
backtest records, so live and backtest files compare line by line.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from strategies import codes as C

ORDER_COLUMNS = ("set", "time", "decision_time", "symbol", "side", "qty", "price", "fees", "reason")
TOKEN_COLUMNS = ("wants_a", "wants_b", "wants_reserve", "overflows_a", "overflows_b", "overflows_reserve",
                 "reserve_fallbacks")


def _val(x: Any) -> str:
    return str(getattr(x, "value", x))


def _reason(o: Any, parent: Any) -> str:
    cid = str(o.client_order_id or "")
    if "-protect-" in cid or (parent is not None and "-protect-" in str(parent.client_order_id)):
        return "stop" if _val(o.type) == "stop" else "take_profit"
    if parent is None and cid.startswith("tl-"):
        parts = cid.split("-")
        return parts[2] if len(parts) > 2 else "signal"
    if _val(o.type) == "stop":
        return "stop"
    if _val(o.type) == "limit" and parent is not None:
        return "take_profit"
    return "manual"


def broker_orders(broker: Any, after: pd.Timestamp | None = None) -> pd.DataFrame:
    """Every fill the broker reports (parents and legs), oldest first, in the backtest's order columns."""
    from alpaca.trading.enums import QueryOrderStatus
    from alpaca.trading.requests import GetOrdersRequest

    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    cursor = after
    while True:
        req = GetOrdersRequest(status=QueryOrderStatus.ALL, nested=True, limit=500, direction="asc",
                               after=None if cursor is None else cursor.to_pydatetime())
        page = broker._call("get_orders", broker.client.get_orders, req)
        fresh = [o for o in page if str(o.id) not in seen]
        for o in fresh:
            seen.add(str(o.id))
            for x, parent in [(o, None), *[(leg, o) for leg in (o.legs or [])]]:
                q = float(x.filled_qty or 0)
                if q <= 0:
                    continue
                t = pd.Timestamp(x.filled_at).tz_convert("UTC")
                rows.append({"set": 0, "time": t, "decision_time": pd.NaT, "symbol": x.symbol,
                             "side": _val(x.side), "qty": q, "price": float(x.filled_avg_price), "fees": 0.0,
                             "reason": _reason(x, parent), "client_order_id": x.client_order_id})
        if len(page) < 500 or not fresh:
            break
        cursor = pd.Timestamp(page[-1].created_at)
    df = pd.DataFrame(rows, columns=[*ORDER_COLUMNS, "client_order_id"])
    if len(df):
        df["decision_time"] = df["time"] - pd.Timedelta(minutes=1)
        df = df.sort_values(["time", "side", "symbol"], kind="stable").reset_index(drop=True)
    return df


def decisions_frame(records: list[dict[str, Any]], symbols: tuple[str, ...]) -> pd.DataFrame:
    """Non-trivial decisions of every recorded bar as long rows: time, symbol, reason, score.

    As `RunResult.decisions_frame`: an inverse ETF's basket decision carries its basket's mean score.
    """
    times, syms, reasons, scores = [], [], [], []
    for rec in records:
        t = pd.Timestamp(rec["t"], unit="s", tz="UTC")
        basket = rec.get("dscores")
        for j, code in enumerate(rec["codes"]):
            if code != C.NOT_EVALUATED:
                times.append(t)
                syms.append(symbols[j])
                reasons.append(C.DECISION_NAMES[code])
                ds = float("nan") if basket is None else float(basket[j])
                scores.append(float(rec["scores"][j]) if np.isnan(ds) else ds)  # an inverse ETF: its basket's score
    index = (pd.DatetimeIndex(times) if times else pd.DatetimeIndex([], tz="UTC")).as_unit("ns")
    return pd.DataFrame({"time": index,
                         "symbol": np.asarray(syms, dtype=object), "reason": np.asarray(reasons, dtype=object),
                         "score": np.asarray(scores, dtype=float)})


def _utc(epochs: list[int]) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(np.asarray(epochs, dtype=np.int64), unit="s", utc=True)).as_unit("ns")


def kernel_orders(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The kernel's own fills of every recorded bar in the backtest's order columns (`RunResult.orders_frame`)."""
    rows = [f for rec in records for f in rec["fills"] if len(f) >= 8]
    df = pd.DataFrame({
        "set": np.zeros(len(rows), dtype=np.int32),
        "time": _utc([f[6] for f in rows]), "decision_time": _utc([f[7] for f in rows]),
        "symbol": np.asarray([f[0] for f in rows], dtype=object),
        "side": np.asarray(["buy" if f[1] > 0 else "sell" for f in rows], dtype=object),
        "qty": np.asarray([f[2] for f in rows], dtype=float), "price": np.asarray([f[3] for f in rows], dtype=float),
        "fees": np.asarray([f[5] for f in rows], dtype=float),
        "reason": np.asarray([f[4] for f in rows], dtype=object),
    })
    return df


def tokens_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Per decided bar the kernel's token counts (TOKEN_COLUMNS), with `time` = bar start (UTC)."""
    tok = np.array([rec.get("tok", [0] * len(TOKEN_COLUMNS)) for rec in records], dtype=np.int64)
    tok = tok.reshape(len(records), len(TOKEN_COLUMNS))
    df = pd.DataFrame(tok, columns=list(TOKEN_COLUMNS))
    df.insert(0, "time", _utc([rec["t"] for rec in records]))
    return df


def triggers_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The session events (rollback triggers, hard rollback) the kernel fired, as `triggers_frame` gives them.

    `bar` is the row in the event's session (the runner steps session by session).
    """
    from strategies import kernel as K
    from strategies.base import TRIGGER_DTYPE, triggers_frame
    from strategies.tiered_basket import _triggers

    ev = [e for rec in records for e in rec.get("events", [])]
    rows = _triggers(0, np.array(ev, dtype=float).reshape(len(ev), K.N_EV), len(ev)) if ev \
        else np.zeros(0, dtype=TRIGGER_DTYPE)
    return triggers_frame(rows)
