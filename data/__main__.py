"""`python -m data`: import bar files, fetch from Alpaca, build the synthetic sample, import filing events."""

from __future__ import annotations

import argparse
import sys

from tierlab.cli import split_symbols
from tierlab.errors import TierlabError


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree: one subcommand per way into the catalog."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", help="catalog directory (default: $TIERLAB_HOME/catalog)")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    p = argparse.ArgumentParser(prog="python -m data", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND",
                           help="import, fetch, sample or events (COMMAND --help for its flags)")
    imp = sub.add_parser("import", parents=[common], help="import a CSV/parquet bar file for one symbol")
    imp.add_argument("path", help="the CSV or parquet file of bars")
    imp.add_argument("--symbol", required=True, help="the symbol the file's bars belong to, e.g. NVDA")
    imp.add_argument("--tz", help="time zone of naive times, e.g. America/New_York")
    imp.add_argument("--label", choices=("start", "end"), default="start", help="bars labelled by start or end")
    imp.add_argument("--repair", action="store_true", help="drop/fix bad rows and report them instead of failing")
    imp.add_argument("--force", action="store_true", help="with --repair: drop bad rows even when they are more than 1%%")
    fet = sub.add_parser("fetch", parents=[common], help="fetch missing days of 1-minute bars from Alpaca")
    fet.add_argument("--symbols", nargs="+", required=True, metavar="SYM",
                     help="symbols, by commas or spaces (NVDA,AMD or NVDA AMD)")
    fet.add_argument("--start", required=True, help="first session date, YYYY-MM-DD")
    fet.add_argument("--end", required=True, help="last session date, inclusive, YYYY-MM-DD")
    fet.add_argument("--url", help="data API base URL (default: $TIERLAB_ALPACA_DATA_URL or Alpaca's)")
    fet.add_argument("--feed", default="iex", help="iex (free) or sip")
    sam = sub.add_parser("sample", parents=[common], help="write the synthetic sample sessions")
    sam.add_argument("--start", help="first session date, YYYY-MM-DD (default: the sample's)")
    sam.add_argument("--end", help="last session date, inclusive (default: the sample's)")
    ev = sub.add_parser("events", parents=[common], help="import filing events: CSV (time,ticker,form,title[,url]) "
                        "or EDGAR files (form/company .idx, latest-filings Atom feed)")
    ev.add_argument("path", help="the events file (CSV, EDGAR .idx or Atom feed)")
    ev.add_argument("--format", dest="fmt", choices=("auto", "csv", "edgar-index", "edgar-atom"), default="auto",
                    help="file format (default: from the name: .idx, .atom/.xml, .csv)")
    ev.add_argument("--tickers", help="CIK -> ticker table in EDGAR's company_tickers.json layout "
                    "(default: the shipped table of the universe)")
    return p


def run(a: argparse.Namespace) -> str:
    """Call the one function behind the chosen subcommand."""
    from data.events import import_events
    from data.importers.alpaca import fetch_cli
    from data.importers.csv_files import import_cli
    from data.sample import write_sample

    if a.cmd == "import":
        return import_cli(a.path, a.symbol, a.tz, a.label, a.repair, a.root, force=a.force)
    if a.cmd == "fetch":
        return fetch_cli(split_symbols(a.symbols), a.start, a.end, a.url, a.feed, a.root)
    return write_sample(a.root, a.start, a.end) if a.cmd == "sample" else import_events(a.path, a.root, a.fmt, a.tickers)


def main(argv: list[str] | None = None) -> int:
    """Parse, run, print; a TierlabError is one `error: ...` line and exit code 2 (traceback with --debug)."""
    a = build_parser().parse_args(argv)
    try:
        print(run(a))
    except TierlabError as exc:
        if a.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
