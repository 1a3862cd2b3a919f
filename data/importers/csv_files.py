"""Import bar files (CSV or parquet, `datetime,open,high,low,close,volume[,vwap,trade_count]`) into the catalog.

Times may carry an offset or be naive local times read in `tz`; bars labelled by their end (09:31 ..
16:00 New York, common in exports) are moved to their start with `label="end"` (SPEC §0), and a file
that looks end-labelled but was read as start-labelled is refused with that hint. Ascending or
descending files are both fine; duplicates and mixed order are refused (or fixed with `repair`, which
refuses to drop more than 1% of the rows unless `force`). Symbols are upper-cased.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from data.bars import BAR_COLUMNS, OPTIONAL_COLUMNS
from data.calendar import BAR, off_session
from data.catalog import Catalog, WriteReport, normalize_symbol
from data.validate import validate_bars
from tierlab.errors import DataError

TIME_COLUMNS: tuple[str, ...] = ("datetime", "timestamp", "time", "date")
MAX_REPAIR_SHARE = 0.01  # --repair may drop at most this share of a file's rows without --force
END_LABEL_HINT = "these look like bars labelled by their end: try --label end"
ALIASES: dict[str, str] = {"o": "open", "h": "high", "l": "low", "c": "close", "v": "volume", "vw": "vwap",
                           "n": "trade_count", "trades": "trade_count"}


def read_bar_file(path: str | os.PathLike[str], *, symbol: str, tz: str | None = None,
                  label: str = "start") -> tuple[pd.DataFrame, np.ndarray]:
    """Read one bar file into (frame indexed by UTC bar start, file line numbers); nothing is validated yet.

    Raises DataError for unreadable files, unknown or missing columns, unparsable or tz-naive times
    (when `tz` is not given), a `symbol` column that disagrees, or a bad `label`.
    """
    path = Path(path)
    if label not in ("start", "end"):
        raise DataError(f"{path}: --label must be 'start' or 'end', got {label!r}")
    try:
        raw = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path, dtype=str)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read bar file: {exc}") from exc
    raw = raw.rename(columns=lambda c: ALIASES.get(str(c).strip().lower(), str(c).strip().lower()))
    tcols = [c for c in TIME_COLUMNS if c in raw.columns]
    if not tcols and isinstance(raw.index, pd.DatetimeIndex):
        raw = raw.rename_axis("datetime").reset_index()
        tcols = ["datetime"]
    if not tcols:
        raise DataError(f"{path}: no time column (one of {', '.join(TIME_COLUMNS)})")
    if "symbol" in raw.columns:
        other = sorted(set(raw["symbol"].astype(str).str.strip().str.upper()) - {symbol})
        if other:
            raise DataError(f"{path}: field symbol: file holds {', '.join(other)}, not only --symbol {symbol}")
        raw = raw.drop(columns="symbol")
    known = {tcols[0], *BAR_COLUMNS, *OPTIONAL_COLUMNS}
    extra = [c for c in raw.columns if c not in known]
    if extra:
        raise DataError(f"{path}: unknown column(s) {', '.join(extra)}; expected {tcols[0]},"
                        f" {', '.join(BAR_COLUMNS + OPTIONAL_COLUMNS)}")
    lines = np.arange(2, len(raw) + 2)  # header is line 1
    times = _parse_times(raw[tcols[0]], path, tz, lines)
    if label == "end":
        times = times - BAR
    df = raw.drop(columns=tcols[0])
    df.index = times
    if len(df) > 1 and times[0] > times[-1]:
        df, lines = df.iloc[::-1], lines[::-1]
    return df, lines


def _parse_times(col: pd.Series, path: Path, tz: str | None, lines: np.ndarray) -> pd.DatetimeIndex:
    if isinstance(col.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(col):
        times = pd.DatetimeIndex(col)
    else:
        text = col.astype(str).str.strip()
        if not len(text):
            return pd.DatetimeIndex([], tz="UTC")
        try:
            parsed = pd.to_datetime(text, errors="coerce", format="mixed", utc=False)
        except ValueError:  # offsets that differ across a DST change: read every row as UTC
            parsed = pd.to_datetime(text, errors="coerce", format="mixed", utc=True)
        if parsed.isna().any():
            i = int(np.flatnonzero(parsed.isna().to_numpy())[0])
            raise DataError(f"{path}: line {lines[i]}: field datetime: cannot read {text.iloc[i]!r} as a time")
        if parsed.dtype == object:  # mixed offsets as per-row objects: make them UTC
            parsed = pd.to_datetime(text, utc=True, format="mixed")
        times = pd.DatetimeIndex(parsed)
    if times.tz is None:
        if tz is None:
            raise DataError(f"{path}: line {lines[0]}: field datetime: times are tz-naive ({times[0]}); "
                            "pass --tz (e.g. America/New_York) or write offsets")
        try:
            times = times.tz_localize(tz, ambiguous="raise", nonexistent="raise")
        except Exception as exc:
            raise DataError(f"{path}: field datetime: cannot read times in time zone {tz!r}: {exc}") from exc
    return times.tz_convert("UTC").as_unit("ns")


def looks_end_labelled(times: pd.DatetimeIndex) -> bool:
    """True when bar starts include a session's closing minute (16:00, or 13:00 on a half day) and no opening one.

    That is what bars labelled by their end (09:31 .. 16:00) look like when read as starts.
    """
    try:
        off, before_off = off_session(times), off_session(times - BAR)
    except DataError:  # dates the calendar does not cover: validation names them
        return False
    at_close = off & ~before_off  # the minute before is a session minute, this one is not
    at_open = ~off & before_off  # this minute is in the session, the one before is not
    return bool(at_close.any() and not at_open.any())


def import_file(path: str | os.PathLike[str], symbol: str, *, tz: str | None = None, label: str = "start",
                repair: bool = False, force: bool = False, catalog: Catalog | None = None) -> WriteReport:
    """Read, validate and append one symbol's bar file; only days missing from the catalog are added.

    Real bars replace synthetic sample days (see `Catalog.write`). A repair that would drop more than
    1% of the rows, or the closing bars of a file that looks end-labelled, is refused naming the share,
    unless `force`.
    """
    catalog = catalog or Catalog()
    symbol = normalize_symbol(symbol)
    df, lines = read_bar_file(path, symbol=symbol, tz=tz, label=label)
    hint = label == "start" and looks_end_labelled(df.index)
    try:
        clean, repairs = validate_bars(df, symbol, source=str(path), rows=lines, row_word="line", repair=repair)
    except DataError as exc:
        if hint and "field timestamp" in str(exc):
            raise DataError(f"{exc}; {END_LABEL_HINT}") from None
        raise
    dropped = len(df) - len(clean)
    share = dropped / len(df) if len(df) else 0.0
    if dropped and not force and (share > MAX_REPAIR_SHARE or hint):
        why = repairs[0].split(": ", 1)[-1] if repairs else ""
        limit = f", more than {MAX_REPAIR_SHARE:.0%}" if share > MAX_REPAIR_SHARE else ""
        late = f"; the rest would be imported one minute late: {END_LABEL_HINT}" if hint else ""
        raise DataError(f"{symbol} ({path}): --repair would drop {dropped} of {len(df)} rows ({share:.1%}{limit}): "
                        f"{why}{late}; nothing imported (add --force to drop them anyway)")
    report = catalog.write(symbol, clean, source=str(path), origin="file")
    report.repairs = repairs + report.repairs
    return report


def import_cli(path: str, symbol: str, tz: str | None, label: str, repair: bool, root: str | None,
               force: bool = False) -> str:
    """CLI entry (`python -m data import`): import one file and describe the result (and any repairs)."""
    report = import_file(path, symbol, tz=tz, label=label, repair=repair, force=force, catalog=Catalog(root))
    return "\n".join([*report.repairs, report.summary()])
