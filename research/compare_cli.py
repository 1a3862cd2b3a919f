"""The `python -m research.compare` command line, apart from numpy and pandas.

research/compare.py parses with this module before its heavy imports, so `--help` and a mistyped
flag answer at once.
"""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments, every one with its help text."""
    ap = argparse.ArgumentParser(
        prog="python -m research.compare",
        description="Modes side by side on replayed sessions (SPEC §8): per-session KPIs, differences with "
                    "bootstrap confidence intervals, a verdict per KPI, per-hour tables and the trigger timeline.",
        epilog="environment: TIERLAB_<FIELD>=value overrides a parameter of every compared preset (e.g. "
               "TIERLAB_COOLDOWN_S=600); TIERLAB_HOME picks the catalog.")
    ap.add_argument("--modes", default=None, help="presets to compare, commas or spaces (default: default,relaxed "
                    "unless --params or --from-live are given); the first is the baseline")
    ap.add_argument("--params", help="TOML parameter files to compare as well, commas or spaces (label: the file's stem)")
    ap.add_argument("--from-live", nargs="*", default=[], metavar="DIR",
                    help="live run directories (orders.parquet, decisions.parquet, params.toml) to compare")
    ap.add_argument("--start", help="first session date (default: the catalog's first)")
    ap.add_argument("--end", help="last session date, inclusive (default: the catalog's last)")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the CIs (default 2000)")
    ap.add_argument("--out", default="reports",
                    help="parent of the run folders (default: reports); each comparison writes its own folder")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    return ap
