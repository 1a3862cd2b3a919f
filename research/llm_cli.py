"""The `python -m research.llm` command line, apart from numpy, pandas and the gate.

research/llm.py parses with this module before its heavy imports, so `--help` answers at once.
"""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments (one subcommand, `record`), every one with its help text."""
    p = argparse.ArgumentParser(
        prog="python -m research.llm",
        description="The LLM gate in research: replay a recorded-answers file (deterministic, free) or record one.",
        epilog="environment: TIERLAB_LLM_MODEL, OPENAI_BASE_URL, OPENAI_API_KEY pick the endpoint; "
               "TIERLAB_<FIELD>=value overrides a parameter (e.g. TIERLAB_LLM_MIN_SCORE=0.7), TIERLAB_MODE the "
               "preset; TIERLAB_HOME picks the catalog and the default answers file.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", help="the one command: record")
    r = sub.add_parser("record", help="ask the endpoint for every request a backtest would make",
                       description="Ask the endpoint once for every request a backtest of the range would make "
                                   "and append each answer to the answers file (resumable).")
    r.add_argument("--start", required=True, help="first session date, YYYY-MM-DD")
    r.add_argument("--end", required=True, help="last session date, inclusive, YYYY-MM-DD")
    r.add_argument("--mode", choices=("default", "relaxed"),
                   help="preset (default: TIERLAB_MODE, else --params' mode, else default)")
    r.add_argument("--params", help="parameter TOML (as research.backtest --params)")
    r.add_argument("--out", default=None, help="answers file (default: $TIERLAB_HOME/llm/answers.jsonl)")
    r.add_argument("--root", help="catalog directory (default: $TIERLAB_HOME/catalog)")
    r.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p
