"""Filing events: the CSV importer refuses what it cannot trust, and the mask shows an event at the first bar
whose close is at or after it (never earlier)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from data.__main__ import main
from data.calendar import session_minutes
from data.catalog import Catalog
from data.events import events_mask


def _csv(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_mask_marks_the_first_bar_closing_at_or_after_the_event():
    idx = session_minutes("2024-11-04", "2024-11-05")
    ev = pd.DataFrame({
        "time": pd.DatetimeIndex(["2024-11-04 14:30:20", "2024-11-04 14:32:00", "2024-11-04 21:30",
                                  "2024-11-01 15:00", "2024-11-05 15:00", "2024-11-06 15:00"], tz="UTC"),
        "ticker": ["AMD", "AMD", "GOOGL", "GOOGL", "QQQ", "AMD"], "form": "8-K", "title": ""})
    m = events_mask(ev, idx, ["AMD", "GOOGL"])
    assert m.shape == (len(idx), 2)
    assert list(np.flatnonzero(m[:, 0])) == [0, 1]  # 14:30:20 -> bar 14:30 (closes 14:31); 14:32 -> bar 14:31
    assert list(np.flatnonzero(m[:, 1])) == [390]  # after-hours filing -> next session's first bar
    # the Nov 1 event predates the panel's first session; QQQ is not a column; Nov 6 is after the last bar
    assert m.sum() == 3


def test_events_csv_is_validated_and_merged(tmp_path, capsys):
    root = tmp_path / "cat"
    good = _csv(tmp_path / "ev.csv", ["time,ticker,form,title", "2024-11-04T10:15:00-05:00,AMD,8-K,Results",
                                      "2024-11-05T14:00:00Z,AVGO,10-Q,Quarterly"])
    assert main(["events", str(good), "--root", str(root)]) == 0
    assert "2 new" in capsys.readouterr().out
    assert main(["events", str(good), "--root", str(root)]) == 0
    assert "0 new" in capsys.readouterr().out
    ev = Catalog(root).read_events("2024-11-04", "2024-11-04")
    assert list(ev["ticker"]) == ["AMD"] and ev["time"].iloc[0] == pd.Timestamp("2024-11-04 15:15", tz="UTC")


def test_bad_event_files_name_the_problem(tmp_path, capsys):
    root = tmp_path / "cat"
    cases = {
        "unknown column(s) source": ["time,ticker,form,title,source", "2024-11-04T10:15:00Z,AMD,8-K,x,edgar"],
        "line 3: field time: '2024-11-04 10:15' is tz-naive": ["time,ticker,form,title",
                                                              "2024-11-04T10:15:00Z,AMD,8-K,x",
                                                              "2024-11-04 10:15,AMD,8-K,x"],
        "line 2: field ticker: unknown ticker 'ZZZZ'": ["time,ticker,form,title", "2024-11-04T10:15:00Z,ZZZZ,8-K,x"],
        "line 2: field time: cannot read 'soon'": ["time,ticker,form,title", "soon,AMD,8-K,x"],
    }
    for expected, lines in cases.items():
        code = main(["events", str(_csv(tmp_path / "bad.csv", lines)), "--root", str(root)])
        err = capsys.readouterr().err
        assert code == 2 and expected in err, err
    assert not root.exists() or not list(root.rglob("*.parquet"))
