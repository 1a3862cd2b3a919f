"""The `python -m data` CLI: subcommands listed, one-line errors with exit 2, tracebacks only with --debug."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from data.__main__ import main
from tierlab.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "data", "--help"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    for cmd in ("import", "fetch", "sample", "events"):
        assert cmd in out


def test_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    missing = str(tmp_path / "nope.csv")
    assert main(["import", missing, "--symbol", "NVDA", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nope.csv" in err
    with pytest.raises(DataError):
        main(["import", missing, "--symbol", "NVDA", "--root", str(tmp_path), "--debug"])
