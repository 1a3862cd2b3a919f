"""What a live run did, in the backtest's schema: orders (from the broker's fills) and decisions.

`broker_orders` reads every filled order (bracket legs included) from the broker, the truth;
`decisions_frame` turns the runner's per-bar records into the rows `RunResult.decisions_frame`
gives (time, symbol, reason, score), so live and backtest files compare line by line.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from strategies import codes as C

ORDER_COLUMNS = ("set", "time", "decision_time", "symbol", "side", "qty", "price", "fees", "reason")


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
    """Non-trivial decisions of every recorded bar as long rows: time, symbol, reason, score."""
    times, syms, reasons, scores = [], [], [], []
    for rec in records:
        t = pd.Timestamp(rec["t"], unit="s", tz="UTC")
        for j, code in enumerate(rec["codes"]):
            if code != C.NOT_EVALUATED:
                times.append(t)
                syms.append(symbols[j])
                reasons.append(C.DECISION_NAMES[code])
                scores.append(float(rec["scores"][j]))
    index = (pd.DatetimeIndex(times) if times else pd.DatetimeIndex([], tz="UTC")).as_unit("ns")
    return pd.DataFrame({"time": index,
                         "symbol": np.asarray(syms, dtype=object), "reason": np.asarray(reasons, dtype=object),
                         "score": np.asarray(scores, dtype=float)})
