"""EDGAR filings saved as files -> filing events: the daily form/company index and the latest-filings Atom feed.

Both map a filer's CIK to a ticker through a table in EDGAR's own `company_tickers.json` layout
(`{"0": {"cik_str": 320193, "ticker": "AAPL", "title": "Apple Inc."}, ...}`); a small one for the
default universe ships next to this module. Every row is checked before anything is written: a
bad file raises DataError naming the file, the line and the field.

Times. The Atom feed's entry `<updated>` is the acceptance time (with its offset) and is used as
is. The index files carry only the filing date; EDGAR dates a filing accepted after 17:30 New York
on the next business day, so an index row is stamped 17:30 New York on its date (the latest moment
it can have been accepted): it is never seen before it could have been known.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from xml.parsers import expat

import pandas as pd

from data.events import empty_events, validate_events
from tierlab.errors import DataError

SHIPPED_TICKERS = Path(__file__).with_name("company_tickers.json")
ARCHIVES = "https://www.sec.gov/Archives/"
INDEX_FIELDS = ("Form Type", "Company Name", "CIK", "Date Filed", "File Name")
INDEX_CUTOFF = "17:30"  # New York; a filing accepted later is dated the next business day
FORMATS = ("csv", "edgar-index", "edgar-atom")
_CIK_IN_TITLE = re.compile(r"\((\d{10})\)")


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _read_text(path: str | os.PathLike[str]) -> str:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # EDGAR's older files are Latin-1


def load_cik_tickers(path: str | os.PathLike[str] | None = None) -> dict[int, tuple[str, ...]]:
    """CIK -> tickers from a file in `company_tickers.json` layout (default: the shipped universe table)."""
    path = SHIPPED_TICKERS if path is None else Path(path)
    text = _read_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    if not isinstance(doc, dict):
        raise DataError(f"{path}: line 1: expected an object of entries like "
                        '{"0": {"cik_str": 320193, "ticker": "AAPL", "title": "Apple Inc."}}')
    out: dict[int, list[str]] = {}
    for key, entry in doc.items():
        m = re.search(r'"' + re.escape(str(key)) + r'"\s*:', text)
        where = f"{path}: line {_line_of(text, m.start()) if m else 1}: entry {key!r}"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected an object with cik_str, ticker, title")
        cik, ticker = entry.get("cik_str"), entry.get("ticker")
        if isinstance(cik, str) and cik.isdigit():
            cik = int(cik)
        if not isinstance(cik, int) or isinstance(cik, bool) or cik <= 0:
            raise DataError(f"{where}: field cik_str: expected a positive integer, got {cik!r}")
        if not isinstance(ticker, str) or not ticker.strip():
            raise DataError(f"{where}: field ticker: expected a ticker symbol, got {ticker!r}")
        out.setdefault(cik, []).append(ticker.strip().upper())
    return {k: tuple(v) for k, v in out.items()}


def _to_universe(cik: int, ciks: dict[int, tuple[str, ...]], known: set[str]) -> list[str]:
    return [t for t in ciks.get(cik, ()) if t in known]


def parse_index(path: str | os.PathLike[str], ciks: dict[int, tuple[str, ...]], known: Iterable[str]) -> pd.DataFrame:
    """Events from an EDGAR index file (form.YYYYMMDD.idx or company.YYYYMMDD.idx, also the quarterly ones).

    Column positions come from the header line (`Form Type  Company Name  CIK  Date Filed  File Name`
    in either order), which must be followed by a line of dashes; rows of unknown CIKs are dropped.
    """
    known = set(known)
    lines = _read_text(path).splitlines()
    head = next((i for i, ln in enumerate(lines) if all(f in ln for f in INDEX_FIELDS)), None)
    if head is None:
        raise DataError(f"{path}: line 1: no header line naming {', '.join(INDEX_FIELDS)}; "
                        "is this an EDGAR form.idx/company.idx file?")
    if head + 1 >= len(lines) or not lines[head + 1].strip() or set(lines[head + 1].strip()) != {"-"}:
        raise DataError(f"{path}: line {head + 2}: expected the line of dashes under the header")
    header = lines[head]
    starts = sorted((header.index(f), f) for f in INDEX_FIELDS)
    cuts = [(f, s, starts[k + 1][0] if k + 1 < len(starts) else None) for k, (s, f) in enumerate(starts)]
    rows = []
    for n, line in enumerate(lines[head + 2:], start=head + 3):
        if not line.strip():
            continue
        if len(line.rstrip()) <= cuts[-1][1]:
            raise DataError(f"{path}: line {n}: field {cuts[-1][0]}: missing (line has {len(line.rstrip())} "
                            f"characters, the column starts at {cuts[-1][1] + 1})")
        v = {f: line[s:e].strip() for f, s, e in cuts}
        if not v["Form Type"]:
            raise DataError(f"{path}: line {n}: field Form Type: empty")
        if not v["CIK"].isdigit():
            raise DataError(f"{path}: line {n}: field CIK: expected digits, got {v['CIK']!r}")
        raw = v["Date Filed"]
        day = pd.to_datetime(raw, format="%Y%m%d" if len(raw) == 8 else "%Y-%m-%d", errors="coerce")
        if pd.isna(day):
            raise DataError(f"{path}: line {n}: field Date Filed: expected YYYYMMDD or YYYY-MM-DD, got {raw!r}")
        if not v["File Name"].startswith("edgar/"):
            raise DataError(f"{path}: line {n}: field File Name: expected edgar/data/..., got {v['File Name']!r}")
        cik = int(v["CIK"])
        when = pd.Timestamp(f"{day:%Y-%m-%d} {INDEX_CUTOFF}", tz="America/New_York").tz_convert("UTC")
        for tk in _to_universe(cik, ciks, known):
            rows.append({"time": when, "ticker": tk, "form": v["Form Type"],
                         "title": f"{v['Form Type']} - {v['Company Name']} ({cik:010d})",
                         "url": ARCHIVES + v["File Name"]})
    return _frame(rows, path, known)


class _Atom:
    """Collects <entry> fields with the line each entry starts on (expat, namespaces stripped)."""

    def __init__(self, parser: expat.XMLParserType) -> None:
        self.p = parser
        self.entries: list[dict[str, object]] = []
        self.cur: dict[str, object] | None = None
        self.text: list[str] = []
        self.depth = 0

    def start(self, name: str, attrs: dict[str, str]) -> None:
        tag = name.rsplit(" ", 1)[-1]
        if tag == "entry":
            self.cur, self.depth = {"line": self.p.CurrentLineNumber}, 0
        elif self.cur is not None:
            self.depth += 1
            if tag == "link" and ("href" not in self.cur or attrs.get("rel") == "alternate"):
                self.cur["href"] = attrs.get("href", "")
            elif tag == "category" and attrs.get("term"):
                self.cur["term"] = attrs["term"]
            self.cur[f"{tag}@line"] = self.p.CurrentLineNumber
        self.text = []

    def end(self, name: str) -> None:
        tag = name.rsplit(" ", 1)[-1]
        if tag == "entry" and self.cur is not None:
            self.entries.append(self.cur)
            self.cur = None
        elif self.cur is not None and self.depth == 1 and tag in ("title", "updated", "id"):
            self.cur[tag] = "".join(self.text).strip()
        if self.cur is not None:
            self.depth -= 1

    def chars(self, data: str) -> None:
        self.text.append(data)


def parse_atom(path: str | os.PathLike[str], ciks: dict[int, tuple[str, ...]], known: Iterable[str]) -> pd.DataFrame:
    """Events from EDGAR's latest-filings Atom feed (browse-edgar?action=getcurrent&output=atom) saved as a file.

    Per entry: `<updated>` = acceptance time, form = `<category term>` (else the title's prefix),
    CIK = the 10 digits in the title `8-K - NAME (0000320193) (Filer)`, url = the alternate link.
    """
    known = set(known)
    parser = expat.ParserCreate(namespace_separator=" ")
    atom = _Atom(parser)
    parser.StartElementHandler, parser.EndElementHandler = atom.start, atom.end
    parser.CharacterDataHandler = atom.chars
    try:
        parser.Parse(Path(path).read_bytes(), True)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except expat.ExpatError as exc:
        raise DataError(f"{path}: line {exc.lineno}: not well-formed XML ({expat.ErrorString(exc.code)})") from exc
    rows = []
    for e in atom.entries:
        def where(field: str, e: dict = e) -> str:
            return f"{path}: line {e.get(field + '@line', e['line'])}: field {field}"
        title = str(e.get("title", ""))
        if not title:
            raise DataError(f"{where('title')}: missing (expected e.g. '8-K - NAME (0000320193) (Filer)')")
        m = _CIK_IN_TITLE.search(title)
        if m is None:
            raise DataError(f"{where('title')}: no 10-digit CIK in parentheses in {title!r}")
        form = str(e.get("term") or title.split(" - ", 1)[0]).strip()
        if not form or " - " not in title:
            raise DataError(f"{where('category')}: no form type (category term or 'FORM - ' title prefix)")
        raw = str(e.get("updated", ""))
        when = pd.to_datetime(raw, errors="coerce", format="ISO8601") if raw else pd.NaT
        if pd.isna(when):
            raise DataError(f"{where('updated')}: cannot read {raw!r} as a time")
        if when.tz is None:
            raise DataError(f"{where('updated')}: {raw!r} has no UTC offset")
        href = str(e.get("href", ""))
        if not href.startswith(("https://", "http://", "/")):
            raise DataError(f"{where('link')}: expected the filing's href, got {href!r}")
        url = "https://www.sec.gov" + href if href.startswith("/") else href
        for tk in _to_universe(int(m.group(1)), ciks, known):
            rows.append({"time": when.tz_convert("UTC"), "ticker": tk, "form": form, "title": title, "url": url})
    return _frame(rows, path, known)


def _frame(rows: list[dict], path: str | os.PathLike[str], known: set[str]) -> pd.DataFrame:
    if not rows:
        return empty_events()
    df = pd.DataFrame(rows)
    df["time"] = [t.isoformat() for t in df["time"]]
    return validate_events(df, source=str(path), known=known).drop_duplicates().reset_index(drop=True)


def sniff_format(path: str | os.PathLike[str]) -> str:
    """csv, edgar-index or edgar-atom from the file name, else from the first bytes."""
    name = str(path).lower()
    if name.endswith(".idx"):
        return "edgar-index"
    if name.endswith((".atom", ".xml")):
        return "edgar-atom"
    if name.endswith(".csv"):
        return "csv"
    try:
        with open(path, "rb") as fh:
            head = fh.read(512).lstrip()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if head.startswith((b"<?xml", b"<feed")):
        return "edgar-atom"
    return "edgar-index" if head.startswith(b"Description:") else "csv"


def read_edgar(path: str | os.PathLike[str], fmt: str, tickers: str | os.PathLike[str] | None,
               known: Iterable[str]) -> pd.DataFrame:
    """Parse an EDGAR file of format `fmt` into validated events for the `known` tickers."""
    ciks = load_cik_tickers(tickers)
    if fmt == "edgar-index":
        return parse_index(path, ciks, known)
    if fmt == "edgar-atom":
        return parse_atom(path, ciks, known)
    raise DataError(f"--format: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
