"""Bar validation, the one gate every way into the catalog goes through.

`validate_bars` refuses bad bars with a DataError naming the symbol (and file), the row and time, and
the field. With `repair=True` it drops or fixes what it can (bad rows, duplicates, order, off-session
bars) and returns a list of what it did, so nothing is lost silently.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from data.bars import BAR_COLUMNS, OPTIONAL_COLUMNS, PRICE_COLUMNS
from data.calendar import EXCHANGE, NEW_YORK, off_session
from tierlab.errors import DataError


def _where(symbol: str, source: str | None) -> str:
    return f"{symbol} ({source})" if source else symbol


class _Checker:
    """Collects row-level problems; raises on the first kind found unless repairing."""

    def __init__(self, df: pd.DataFrame, symbol: str, source: str | None, rows: np.ndarray, row_word: str,
                 repair: bool) -> None:
        self.df, self.where, self.rows, self.row_word, self.repair = df, _where(symbol, source), rows, row_word, repair
        self.drop = np.zeros(len(df), dtype=bool)
        self.report: list[str] = []

    def at(self, i: int) -> str:
        ts = self.df.index[i]
        local = f" ({ts.tz_convert(NEW_YORK):%Y-%m-%d %H:%M} New York)" if ts.tz is not None else ""
        return f"{self.row_word} {self.rows[i]}, {ts}{local}"

    def flag(self, bad: np.ndarray, field: str, what: str) -> None:
        bad = bad & ~self.drop
        if not bad.any():
            return
        pos = np.flatnonzero(bad)
        more = f" (and {len(pos) - 1} more rows)" if len(pos) > 1 else ""
        if not self.repair:
            raise DataError(f"{self.where}: {self.at(pos[0])}: field {field}: {what}{more}")
        self.drop |= bad
        shown = ", ".join(str(self.rows[i]) for i in pos[:5]) + (", ..." if len(pos) > 5 else "")
        self.report.append(f"{self.where}: dropped {len(pos)} rows where {field} {what} ({self.row_word}s {shown})")


def validate_bars(
    df: pd.DataFrame,
    symbol: str,
    *,
    source: str | None = None,
    rows: Sequence[int] | np.ndarray | None = None,
    row_word: str = "row",
    repair: bool = False,
) -> tuple[pd.DataFrame, list[str]]:
    """Check one symbol's long bars (index = bar-start times) and return (clean UTC frame, repair report).

    `rows` labels each input row for messages (e.g. file line numbers; default 1..n); `source` names
    the file. Raises DataError on the first problem unless `repair` is set.
    """
    where = _where(symbol, source)
    if not isinstance(df.index, pd.DatetimeIndex):
        raise DataError(f"{where}: field timestamp: index is not datetimes (got {type(df.index).__name__})")
    if df.index.tz is None:
        raise DataError(f"{where}: field timestamp: times are tz-naive (first {df.index[0] if len(df) else '-'}); "
                        "give a time zone (--tz) or localize to UTC")
    missing = [c for c in BAR_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}; have {', '.join(map(str, df.columns))}")
    cols = [c for c in BAR_COLUMNS + OPTIONAL_COLUMNS if c in df.columns]
    df = df[cols].copy()
    df.index = pd.DatetimeIndex(df.index).tz_convert("UTC").as_unit("ns")
    df.index.name = "timestamp"
    for c in cols:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    rows = np.arange(1, len(df) + 1) if rows is None else np.asarray(rows)
    chk = _Checker(df, symbol, source, rows, row_word, repair)
    v = {c: df[c].to_numpy() for c in cols}
    for c in (*PRICE_COLUMNS, "volume"):
        chk.flag(np.isnan(v[c]), c, "is missing or not a number")
        chk.flag(np.isinf(v[c]), c, "is infinite")
    for c in PRICE_COLUMNS:
        chk.flag(v[c] <= 0, c, "is not positive")
    chk.flag(v["high"] < v["low"], "high", "is below low")
    for c in ("open", "close"):
        chk.flag((v[c] < v["low"]) | (v[c] > v["high"]), c, "is outside [low, high]")
    chk.flag(v["volume"] < 0, "volume", "is negative")
    if "vwap" in v:
        chk.flag(v["vwap"] <= 0, "vwap", "is not positive")
        chk.flag(np.isinf(v["vwap"]), "vwap", "is infinite")
    if "trade_count" in v:
        chk.flag(v["trade_count"] < 0, "trade_count", "is negative")
        chk.flag(np.isinf(v["trade_count"]), "trade_count", "is infinite")
    _check_times(chk)
    if not chk.drop.any() and df.index.is_monotonic_increasing:
        return df, chk.report
    keep = ~chk.drop
    out = df[keep]
    if not out.index.is_monotonic_increasing:
        out = out.sort_index(kind="stable")
        chk.report.append(f"{where}: sorted {len(out)} rows into time order")
    return out, chk.report


def _check_times(chk: _Checker) -> None:
    idx = chk.df.index
    dup = idx.duplicated(keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup & ~chk.drop)[0]) if (dup & ~chk.drop).any() else None
        if i is not None and not chk.repair:
            first = int(np.flatnonzero(idx == idx[i])[0])
            raise DataError(f"{chk.where}: {chk.at(i)}: field timestamp: duplicate of {chk.row_word} "
                            f"{chk.rows[first]} ({int(dup.sum())} duplicate rows in all)")
        chk.flag(dup, "timestamp", "duplicates an earlier row (first kept)")
    i8 = idx.asi8
    back = np.zeros(len(idx), dtype=bool)
    back[1:] = i8[1:] < np.maximum.accumulate(i8)[:-1]
    if back.any() and not chk.repair:
        i = int(np.flatnonzero(back)[0])
        raise DataError(f"{chk.where}: {chk.at(i)}: field timestamp: out of order (earlier than {chk.row_word} "
                        f"{chk.rows[i - 1]}, {idx[i - 1]}); sort the bars or use --repair")
    try:
        outside = off_session(idx)
    except DataError as exc:  # e.g. dates the exchange calendar does not cover
        raise DataError(f"{chk.where}: field timestamp: {exc}") from None
    chk.flag(outside, "timestamp",
             f"is not a regular-hours {EXCHANGE} minute (pre/post-market, holiday, half-day afternoon or not on the minute)")
