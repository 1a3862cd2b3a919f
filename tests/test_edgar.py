"""EDGAR importers (issue 12.5): hand-built daily index and Atom feed samples in EDGAR's documented layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from data.__main__ import main
from data.catalog import Catalog
from data.importers.edgar import load_cik_tickers, parse_atom, parse_index
from data.universe import UNIVERSE
from tierlab.errors import DataError

PREAMBLE = """Description:           Daily Index of EDGAR Dissemination Feed by Form Type
Last Data Received:    November 4, 2024
Comments:              webmaster@sec.gov
Anonymous FTP:         ftp://ftp.sec.gov/edgar/
""" + " \n" * 4  # EDGAR pads the preamble with lines holding one space


def _form_row(form: str, name: str, cik: int | str, date: str, fname: str) -> str:
    return f"{form:<12}{name:<62}{cik!s:<12}{date:<12}{fname}"


def _form_idx(rows: list[str]) -> str:
    head = _form_row("Form Type", "Company Name", "CIK", "Date Filed", "File Name")
    return PREAMBLE + head + "\n" + "-" * 141 + "\n" + "\n".join(rows) + "\n"


def _company_idx(rows: list[tuple[str, str, int, str, str]]) -> str:
    head = f"{'Company Name':<62}{'Form Type':<12}{'CIK':<12}{'Date Filed':<12}File Name"
    body = [f"{n:<62}{f:<12}{c!s:<12}{d:<12}{p}" for f, n, c, d, p in rows]
    return PREAMBLE.replace("by Form Type", "by Company Name") + head + "\n" + "-" * 141 + "\n" + "\n".join(body) + "\n"


FORM_ROWS = [
    _form_row("10-Q", "APPLE INC", 320193, "20241104", "edgar/data/320193/0000320193-24-000120.txt"),
    _form_row("4", "SOMEONE ELSE LLC", 999999, "20241104", "edgar/data/999999/0000999999-24-000001.txt"),
    _form_row("8-K", "ADVANCED MICRO DEVICES INC", 2488, "20241104", "edgar/data/2488/0000002488-24-000150.txt"),
    _form_row("8-K", "Alphabet Inc.", 1652044, "20241104", "edgar/data/1652044/0001652044-24-000090.txt"),
]


def _atom(entries: list[str]) -> str:
    return ("<?xml version=\"1.0\" encoding=\"ISO-8859-1\" ?>\n"
            "<feed xmlns=\"http://www.w3.org/2005/Atom\">\n"
            "<title>Latest Filings - Mon, 04 Nov 2024 16:20:05 EST</title>\n"
            "<link rel=\"alternate\" href=\"/cgi-bin/browse-edgar?action=getcurrent\"/>\n"
            "<link rel=\"self\" href=\"/cgi-bin/browse-edgar?action=getcurrent\"/>\n"
            "<id>https://www.sec.gov/cgi-bin/browse-edgar?action=getcurrent</id>\n"
            "<author><name>Webmaster</name><email>webmaster@sec.gov</email></author>\n"
            "<updated>2024-11-04T16:20:05-05:00</updated>\n" + "".join(entries) + "</feed>\n")


def _entry(form: str, name: str, cik: str, updated: str, acc: str, role: str = "Filer") -> str:
    return (
        "<entry>\n"
        f"<title>{form} - {name} ({cik}) ({role})</title>\n"
        f"<link rel=\"alternate\" type=\"text/html\" href=\"https://www.sec.gov/Archives/edgar/data/{int(cik)}/"
        f"{acc.replace('-', '')}/{acc}-index.htm\"/>\n"
        f"<summary type=\"html\"> &lt;b&gt;Filed:&lt;/b&gt; 2024-11-04 &lt;b&gt;AccNo:&lt;/b&gt; {acc}</summary>\n"
        f"<updated>{updated}</updated>\n"
        f"<category scheme=\"https://www.sec.gov/\" label=\"form type\" term=\"{form}\"/>\n"
        f"<id>urn:tag:sec.gov,2008:accession-number={acc}</id>\n"
        "</entry>\n")


ATOM_ENTRIES = [
    _entry("8-K", "NVIDIA CORP", "0001045810", "2024-11-04T10:15:23-05:00", "0001045810-24-000300"),
    _entry("4", "Doe John", "0001234567", "2024-11-04T10:16:00-05:00", "0001234567-24-000001", "Reporting"),
    _entry("4", "TESLA, INC.", "0001318605", "2024-11-04T10:16:00-05:00", "0001234567-24-000001", "Issuer"),
]


def test_form_index_rows_become_events_for_universe_tickers_only(tmp_path: Path) -> None:
    f = tmp_path / "form.20241104.idx"
    f.write_text(_form_idx(FORM_ROWS))
    df = parse_index(f, load_cik_tickers(), UNIVERSE)
    assert df["ticker"].tolist() == ["AAPL", "AMD", "GOOGL"]  # the unknown CIK and GOOG (not in universe) drop out
    # no acceptance time in an index: stamped 17:30 New York on the filing date (never earlier than knowable)
    assert set(df["time"]) == {pd.Timestamp("2024-11-04 17:30", tz="America/New_York").tz_convert("UTC")}
    aapl = df.iloc[0]
    assert aapl["form"] == "10-Q"
    assert aapl["url"] == "https://www.sec.gov/Archives/edgar/data/320193/0000320193-24-000120.txt"
    assert "APPLE INC" in aapl["title"]


def test_company_index_layout_reads_the_same(tmp_path: Path) -> None:
    f = tmp_path / "company.20241104.idx"
    f.write_text(_company_idx([("8-K", "ADVANCED MICRO DEVICES INC", 2488, "2024-11-04",
                                "edgar/data/2488/0000002488-24-000150.txt")]))
    df = parse_index(f, load_cik_tickers(), UNIVERSE)
    assert df[["ticker", "form"]].values.tolist() == [["AMD", "8-K"]]


def test_atom_feed_uses_acceptance_time_and_maps_issuer_cik(tmp_path: Path) -> None:
    f = tmp_path / "latest.atom"
    f.write_text(_atom(ATOM_ENTRIES))
    df = parse_atom(f, load_cik_tickers(), UNIVERSE)
    assert df["ticker"].tolist() == ["NVDA", "TSLA"]
    assert df["time"].iloc[0] == pd.Timestamp("2024-11-04 15:15:23", tz="UTC")
    assert df["form"].tolist() == ["8-K", "4"]
    assert df["url"].iloc[0].endswith("/000104581024000300/0001045810-24-000300-index.htm")


@pytest.mark.parametrize(("rows", "expect"), [
    ([_form_row("10-Q", "APPLE INC", "32019X", "20241104", "edgar/data/320193/x.txt")],
     "line 11: field CIK: expected digits, got '32019X'"),
    ([FORM_ROWS[0], _form_row("8-K", "AMD", 2488, "2024-13-45", "edgar/data/2488/x.txt")],
     "line 12: field Date Filed"),
    ([_form_row("", "APPLE INC", 320193, "20241104", "edgar/data/320193/x.txt")], "line 11: field Form Type: empty"),
    ([_form_row("8-K", "APPLE INC", 320193, "20241104", "")], "line 11: field File Name"),
])
def test_malformed_index_is_refused_with_line_and_field(tmp_path: Path, rows: list[str], expect: str) -> None:
    f = tmp_path / "form.20241104.idx"
    f.write_text(_form_idx(rows))
    with pytest.raises(DataError) as err:
        parse_index(f, load_cik_tickers(), UNIVERSE)
    assert str(err.value).startswith(str(f)) and expect in str(err.value)


def test_index_without_header_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "form.20241104.idx"
    f.write_text("just some text\n")
    with pytest.raises(DataError, match="line 1: no header line naming Form Type"):
        parse_index(f, load_cik_tickers(), UNIVERSE)


@pytest.mark.parametrize(("entry", "expect"), [
    (_entry("8-K", "NVIDIA CORP", "0001045810", "yesterday", "0001045810-24-000300"),
     "line 21: field updated: cannot read 'yesterday'"),
    (_entry("8-K", "NVIDIA CORP", "0001045810", "2024-11-04T10:15:23", "0001045810-24-000300"),
     "line 21: field updated: '2024-11-04T10:15:23' has no UTC offset"),
    (_entry("8-K", "NVIDIA CORP", "1045810", "2024-11-04T10:15:23-05:00", "0001045810-24-000300"),
     "line 18: field title: no 10-digit CIK"),
    ("<entry>\n<title>8-K - X (0001045810) (Filer)</title>\n", "not well-formed XML"),
])
def test_malformed_atom_is_refused_with_line_and_field(tmp_path: Path, entry: str, expect: str) -> None:
    f = tmp_path / "latest.atom"
    f.write_text(_atom([ATOM_ENTRIES[0], entry.replace("1045810-24-000300", "1045810-24-000301")]))
    with pytest.raises(DataError) as err:
        parse_atom(f, load_cik_tickers(), UNIVERSE)
    assert str(err.value).startswith(str(f)) and expect in str(err.value)


def test_bad_ticker_table_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "company_tickers.json"
    f.write_text('{"0": {"cik_str": 320193, "ticker": "AAPL", "title": "Apple Inc."},\n'
                 ' "1": {"cik_str": "abc", "ticker": "MSFT", "title": "Microsoft"}}')
    with pytest.raises(DataError, match=r"line 2: entry '1': field cik_str"):
        load_cik_tickers(f)


def test_cli_imports_edgar_files_and_writes_nothing_on_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "cat"
    good = tmp_path / "form.20241104.idx"
    good.write_text(_form_idx(FORM_ROWS))
    feed = tmp_path / "latest.atom"
    feed.write_text(_atom(ATOM_ENTRIES))
    assert main(["events", str(good), "--root", str(root)]) == 0
    assert main(["events", str(feed), "--root", str(root)]) == 0
    ev = Catalog(str(root)).read_events()
    assert sorted(ev["ticker"]) == ["AAPL", "AMD", "GOOGL", "NVDA", "TSLA"]
    assert (ev["url"] != "").all()
    before = Path(Catalog(str(root)).events_path).read_bytes()
    bad = tmp_path / "form.20241105.idx"
    bad.write_text(_form_idx([FORM_ROWS[0], _form_row("8-K", "X", "12a", "20241105", "edgar/data/1/x.txt")]))
    assert main(["events", str(bad), "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: line 12: field CIK") and "Traceback" not in err
    assert Path(Catalog(str(root)).events_path).read_bytes() == before  # the good first row was not written either
    # a user-supplied table in company_tickers.json layout maps another CIK
    table = tmp_path / "tickers.json"
    table.write_text(json.dumps({"0": {"cik_str": 999999, "ticker": "META", "title": "stand-in"}}))
    assert main(["events", str(good), "--root", str(root), "--tickers", str(table)]) == 0
    assert "META" in set(Catalog(str(root)).read_events()["ticker"])


def test_old_events_table_without_url_still_reads(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cat = Catalog(str(tmp_path / "cat"))
    cat.events_path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"time": pa.array([pd.Timestamp("2024-11-04 15:00", tz="UTC")]),
                             "ticker": ["AMD"], "form": ["8-K"], "title": ["x"]}), cat.events_path)
    ev = cat.read_events()
    assert ev["url"].tolist() == [""] and ev["ticker"].tolist() == ["AMD"]
