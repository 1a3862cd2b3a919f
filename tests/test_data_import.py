"""Bar files into the catalog: every bad-input case is refused through the CLI, naming symbol, line, time and
field, and leaves the catalog byte-for-byte unchanged; --repair, --label end, --tz and descending files work."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.__main__ import main
from data.catalog import Catalog

HEADER = "datetime,open,high,low,close,volume"


def snapshot(root: Path) -> dict[str, str]:
    """Every file under the catalog with its content hash (temp files included: none may be left)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def rows(day: str, n: int = 10, first: str = "09:30") -> list[list[str]]:
    """n valid minute bars in New York local time, starting at `first` on `day`."""
    t0 = pd.Timestamp(f"{day} {first}")
    out = []
    for i in range(n):
        o = 100 + i * 0.1
        out.append([f"{t0 + pd.Timedelta(minutes=i):%Y-%m-%d %H:%M:%S}", f"{o:.2f}", f"{o + 0.5:.2f}",
                    f"{o - 0.5:.2f}", f"{o + 0.2:.2f}", str(1000 + i)])
    return out


def write_csv(path: Path, body: list[list[str]], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *(",".join(r) for r in body)]) + "\n")
    return path


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    """A catalog root already holding one good NVDA day (2024-11-01), so 'unchanged' means something."""
    root = tmp_path / "cat"
    good = write_csv(tmp_path / "good.csv", rows("2024-11-01"))
    assert main(["import", str(good), "--symbol", "NVDA", "--tz", "America/New_York", "--root", str(root)]) == 0
    return root


def _set(body: list[list[str]], i: int, col: int, value: str) -> list[list[str]]:
    body[i][col] = value
    return body


# (case id, mutate the 10 good rows of 2024-11-04, expected line of the culprit, expected field/words)
CASES = [
    ("nan-close", lambda b: _set(b, 3, 4, ""), 5, ["field close", "missing"]),
    ("text-open", lambda b: _set(b, 2, 1, "abc"), 4, ["field open", "missing or not a number"]),
    ("zero-open", lambda b: _set(b, 4, 1, "0"), 6, ["field open", "not positive"]),
    ("negative-low", lambda b: _set(_set(b, 4, 3, "-1"), 4, 1, "0.5"), 6, ["field low", "not positive"]),
    ("high-below-low", lambda b: _set(b, 6, 2, "90.00"), 8, ["field high", "below low"]),
    ("open-above-high", lambda b: _set(b, 1, 1, "150.00"), 3, ["field open", "outside [low, high]"]),
    ("close-below-low", lambda b: _set(b, 7, 4, "50.00"), 9, ["field close", "outside [low, high]"]),
    ("negative-volume", lambda b: _set(b, 8, 5, "-5"), 10, ["field volume", "negative"]),
    ("infinite-high", lambda b: _set(b, 3, 2, "inf"), 5, ["field high", "infinite"]),
    ("infinite-volume", lambda b: _set(b, 2, 5, "1e400"), 4, ["field volume", "infinite"]),
    ("duplicate", lambda b: _set(b, 5, 0, b[4][0]), 7, ["field timestamp", "duplicate of line 6"]),
    ("out-of-order", lambda b: [*b[:4], b[5], b[4], *b[6:]], 7, ["field timestamp", "out of order"]),
    ("pre-market", lambda b: _set(b, 0, 0, "2024-11-04 09:29:00"), 2, ["field timestamp", "regular-hours"]),
    ("off-minute", lambda b: _set(b, 9, 0, "2024-11-04 09:39:30"), 11, ["field timestamp", "regular-hours"]),
]


@pytest.mark.parametrize(("mutate", "line", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_bars_are_refused_and_catalog_unchanged(seeded, tmp_path, capsys, mutate, line, words):
    bad = write_csv(tmp_path / "bad.csv", mutate(rows("2024-11-04")))
    before = snapshot(seeded)
    code = main(["import", str(bad), "--symbol", "NVDA", "--tz", "America/New_York", "--root", str(seeded)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: NVDA (") and str(bad) in err and err.count("\n") == 0
    assert f"line {line}," in err
    for w in words:
        assert w in err
    assert snapshot(seeded) == before


@pytest.mark.parametrize(("when", "why"), [
    ("2024-11-28 10:00:00", "Thanksgiving holiday"),
    ("2024-11-29 13:00:00", "half day: closed at 13:00"),
    ("2024-11-30 10:00:00", "Saturday"),
    ("2024-11-04 16:00:00", "after the close"),
])
def test_bars_outside_the_session_are_refused(seeded, tmp_path, capsys, when, why):
    bad = write_csv(tmp_path / "bad.csv", [*rows("2024-11-04", 3), [when, "100", "101", "99", "100", "10"]])
    before = snapshot(seeded)
    assert main(["import", str(bad), "--symbol", "NVDA", "--tz", "America/New_York", "--root", str(seeded)]) == 2, why
    err = capsys.readouterr().err
    assert "line 5," in err and "field timestamp" in err and "regular-hours XNYS minute" in err
    assert snapshot(seeded) == before


def test_tz_naive_times_without_tz_are_refused(seeded, tmp_path, capsys):
    bad = write_csv(tmp_path / "naive.csv", rows("2024-11-04"))
    before = snapshot(seeded)
    assert main(["import", str(bad), "--symbol", "NVDA", "--root", str(seeded)]) == 2
    err = capsys.readouterr().err
    assert "tz-naive" in err and "field datetime" in err and "--tz" in err
    assert snapshot(seeded) == before


def test_unknown_columns_and_wrong_symbol_are_refused(seeded, tmp_path, capsys):
    extra = write_csv(tmp_path / "extra.csv", [[*r, "x"] for r in rows("2024-11-04")], HEADER + ",note")
    assert main(["import", str(extra), "--symbol", "NVDA", "--tz", "America/New_York", "--root", str(seeded)]) == 2
    assert "unknown column(s) note" in capsys.readouterr().err
    other = write_csv(tmp_path / "sym.csv", [[*r, "AMD"] for r in rows("2024-11-04")], HEADER + ",symbol")
    assert main(["import", str(other), "--symbol", "NVDA", "--tz", "America/New_York", "--root", str(seeded)]) == 2
    assert "field symbol: file holds AMD" in capsys.readouterr().err


def test_repair_drops_bad_rows_reports_them_and_keeps_the_rest(seeded, tmp_path, capsys):
    body = rows("2024-11-04")
    body[2][2] = "90.00"  # high < low on line 4
    body[6][0] = body[5][0]  # duplicate on line 8
    bad = write_csv(tmp_path / "bad.csv", [body[9], *body[:9]])  # and out of order
    code = main(["import", str(bad), "--symbol", "NVDA", "--tz", "America/New_York", "--repair", "--force",
                 "--root", str(seeded)])  # 2 of 10 rows dropped: more than 1%, so --force
    out = capsys.readouterr().out
    assert code == 0
    assert "dropped 1 rows where high is below low (lines 5)" in out
    assert "dropped 1 rows where timestamp duplicates" in out and "sorted 8 rows" in out
    bars = Catalog(seeded).read_panel(["NVDA"], "2024-11-04", "2024-11-04").bars("NVDA")
    assert len(bars) == 8
    assert bars.index[0] == pd.Timestamp("2024-11-04 14:30", tz="UTC")  # 09:30 EST after the DST change


def test_descending_end_labelled_file_lands_on_bar_starts(tmp_path):
    # A whole session labelled by bar end (09:31 .. 16:00 New York), newest first, with explicit offsets.
    ends = pd.date_range("2024-07-01 09:31", "2024-07-01 16:00", freq="1min", tz="America/New_York")
    body = [[t.isoformat(), "10", "11", "9", "10.5", "7"] for t in ends[::-1]]
    f = write_csv(tmp_path / "end.csv", body)
    root = tmp_path / "cat"
    assert main(["import", str(f), "--symbol", "AAPL", "--label", "end", "--root", str(root)]) == 0
    p = Catalog(root).read_panel(["AAPL"], "2024-07-01", "2024-07-01")
    assert p.shape == (390, 1) and not np.isnan(p.close).any()
    assert p.index[0] == pd.Timestamp("2024-07-01 13:30", tz="UTC")  # 09:30 EDT
    # Read as bar starts, the 16:00 bar is after the close: refused.
    assert main(["import", str(f), "--symbol", "MSFT", "--label", "start", "--root", str(root)]) == 2


def test_offsets_that_change_across_dst_are_read_as_utc(tmp_path):
    # An export spanning the Nov 3 2024 DST change: -04:00 before it, -05:00 after it.
    body = [["2024-11-01T15:58:00-04:00", "100", "101", "99", "100.5", "1000"],
            ["2024-11-01T15:59:00-04:00", "100.5", "101", "100", "100.8", "1000"],
            ["2024-11-04T09:30:00-05:00", "101", "102", "100", "101.5", "2000"]]
    root = tmp_path / "cat"
    assert main(["import", str(write_csv(tmp_path / "dst.csv", body)), "--symbol", "AMD", "--root", str(root)]) == 0
    p = Catalog(root).read_panel(["AMD"], "2024-11-01", "2024-11-04")
    bars = p.bars("AMD")
    assert list(bars.index) == [pd.Timestamp("2024-11-01 19:58", tz="UTC"), pd.Timestamp("2024-11-01 19:59", tz="UTC"),
                                pd.Timestamp("2024-11-04 14:30", tz="UTC")]


def test_import_appends_only_missing_days(seeded, tmp_path, capsys):
    twice = write_csv(tmp_path / "two.csv", rows("2024-11-01") + rows("2024-11-04"))
    assert main(["import", str(twice), "--symbol", "NVDA", "--tz", "America/New_York", "--root", str(seeded)]) == 0
    assert "wrote 10 bars on 1 new days, skipped 1 days" in capsys.readouterr().out
    assert len(Catalog(seeded).read_panel(["NVDA"]).bars("NVDA")) == 20


def test_parquet_files_import_like_csv(tmp_path):
    idx = pd.date_range("2024-11-05 14:30", periods=5, freq="1min", tz="UTC", name="timestamp")
    df = pd.DataFrame({"open": 5.0, "high": 6.0, "low": 4.0, "close": 5.5, "volume": 100.0, "vwap": 5.2}, index=idx)
    df.to_parquet(tmp_path / "b.parquet")
    assert main(["import", str(tmp_path / "b.parquet"), "--symbol", "AMD", "--root", str(tmp_path / "c")]) == 0
    got = Catalog(tmp_path / "c").read_panel(["AMD"], "2024-11-05", "2024-11-05").bars("AMD")
    assert list(got.index) == list(idx) and (got["vwap"] == 5.2).all()


def test_dates_the_calendar_does_not_cover_name_the_file(seeded, tmp_path, capsys):
    before = snapshot(seeded)
    f = write_csv(tmp_path / "old.csv", [["1990-01-02 09:30:00", "1", "2", "0.5", "1.5", "20"]])
    assert main(["import", str(f), "--symbol", "AMD", "--tz", "America/New_York", "--root", str(seeded)]) == 2
    err = capsys.readouterr().err
    assert "AMD" in err and "old.csv" in err and "field timestamp" in err and "outside the XNYS calendar" in err
    assert snapshot(seeded) == before


FULL_HEADER = HEADER + ",vwap,trade_count"


@pytest.mark.parametrize(
    ("row", "col", "value", "words"),
    [
        (3, 5, "", ["field volume", "missing or not a number"]),
        (3, 5, "nan", ["field volume", "missing or not a number"]),
        (4, 6, "0", ["field vwap", "not positive"]),
        (4, 6, "-100.2", ["field vwap", "not positive"]),
        (6, 7, "-3", ["field trade_count", "negative"]),
    ],
    ids=["empty-volume", "nan-volume", "zero-vwap", "negative-vwap", "negative-trade_count"],
)
def test_nan_volume_bad_vwap_and_negative_trade_count_are_refused(seeded, tmp_path, capsys, row, col, value, words):
    body = [[*r, f"{float(r[1]) + 0.1:.2f}", "12"] for r in rows("2024-11-04")]
    good = write_csv(tmp_path / "good.csv", body, FULL_HEADER)
    body[row][col] = value
    bad = write_csv(tmp_path / "bad.csv", body, FULL_HEADER)
    before = snapshot(seeded)
    assert main(["import", str(bad), "--symbol", "NVDA", "--tz", "America/New_York", "--root", str(seeded)]) == 2
    err = capsys.readouterr().err
    assert f"line {row + 2}," in err and all(w in err for w in words), err
    assert snapshot(seeded) == before
    assert main(["import", str(good), "--symbol", "NVDA", "--tz", "America/New_York", "--root", str(seeded)]) == 0
