"""CLI: `python -m live.sim --port 8765 --replay 2024-11-01 --speed 60` serves catalog bars on loopback.

--speed 0 is step mode (advance with POST /sim/step). Keys come from the environment only
(SIM_API_KEY / SIM_SECRET_KEY; a key on a command line shows in `ps`), else the published
defaults, which are fit for loopback use only. --account cash keeps a cash account (no shorting).
--sample writes the bundled sample into the catalog first. --rate-limit N answers 429 past N
requests a minute per key (200, Alpaca's; raise it for benchmarks that must not stall on 429).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from tierlab.cli import split_symbols
from tierlab.errors import ConfigError, DataError, TierlabError

if TYPE_CHECKING:
    from data.bars import Panel
    from data.catalog import Catalog


def _require_bars(panel: Panel, cat: Catalog, a: argparse.Namespace) -> None:
    """DataError (one line, with the way out) when the replay would have no symbol or no bar at all."""
    import numpy as np

    from data.sample import DEFAULT_END, DEFAULT_START

    if panel.symbols and len(panel.index) and not np.isnan(panel.close).all():
        return
    span = a.replay if not a.end or a.end == a.replay else f"{a.replay}..{a.end}"
    why = "" if len(panel.index) else " (no XNYS session in that range)"
    fix = (f"the bundled sample covers {DEFAULT_START}..{DEFAULT_END}" if a.sample
           else "run with --sample (or `python -m data sample`) to write the bundled sample first")
    raise DataError(f"the catalog at {cat.root} has no bars for {span}{why}; {fix}")


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments, every one with its help text (defaults from SimConfig, or the parameters)."""
    ap = argparse.ArgumentParser(
        prog="python -m live.sim", description=__doc__.splitlines()[0],
        epilog="environment: TIERLAB_<FIELD>=value overrides a parameter (e.g. TIERLAB_SLIPPAGE=0.001; a bad "
               "value such as TIERLAB_COOLDOWN_S=abc is refused), TIERLAB_MODE the preset; TIERLAB_HOME picks "
               "the catalog; SIM_API_KEY / SIM_SECRET_KEY the keys the sim accepts.")
    ap.add_argument("--host", default="127.0.0.1", help="loopback address only (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8765, help="TCP port, 0 picks a free one (default 8765)")
    ap.add_argument("--replay", required=True, help="first session date to replay (YYYY-MM-DD)")
    ap.add_argument("--end", help="last session date (default: the --replay date)")
    ap.add_argument("--symbols", nargs="+", metavar="SYM",
                    help="symbols, by commas or spaces (NVDA,AMD or NVDA AMD; default: all in the catalog)")
    ap.add_argument("--speed", type=float, default=60.0, help="x real time; 0 = step mode (POST /sim/step)")
    ap.add_argument("--slippage", type=float, default=None,
                    help="share of the price a market fill moves against you (default: the parameters' slippage, "
                         "preset then TIERLAB_SLIPPAGE)")
    ap.add_argument("--fee-per-share", type=float, default=None,
                    help="fee per share filled (default: the parameters' fee_per_share)")
    ap.add_argument("--fee-per-order", type=float, default=None,
                    help="fee per order filled (default: the parameters' fee_per_order)")
    ap.add_argument("--cash", type=float, default=None, help="starting cash (default: SimConfig's, 100000)")
    ap.add_argument("--max-volume-share", type=float, default=None,
                    help="most of a bar's volume one order may fill in that bar (default: SimConfig's, 0.1)")
    ap.add_argument("--exact-prices", action="store_true",
                    help="parity replays: accept prices off Alpaca's tick and report exact float prices")
    ap.add_argument("--account", choices=("margin", "cash"), default=None,
                    help="margin (Alpaca paper's default: 2x/4x, shorting) or cash (1x, no shorting)")
    ap.add_argument("--rate-limit", type=int, default=200, metavar="N",
                    help="requests per minute per API key before 429 (default 200, as Alpaca; raise it for "
                         "benchmarks)")
    ap.add_argument("--sample", action="store_true", help="write the bundled synthetic sample if missing")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, load the replay panel from the catalog and serve until interrupted."""
    a = build_parser().parse_args(argv)
    try:
        from live.sim.engine import SimConfig
        from live.sim.server import SimServer, loopback_host
        from strategies.params import Params

        loopback_host(a.host)  # fail before touching the catalog
        if not 0 <= a.port <= 65535:
            raise ConfigError(f"--port must be 0..65535 (0 picks a free port), got {a.port}")
        if a.rate_limit < 1:
            raise ConfigError(f"--rate-limit must be >= 1 request per minute, got {a.rate_limit}")
        params = Params.load()  # preset (TIERLAB_MODE), then TIERLAB_<FIELD>: a bad value is one line
        from data.catalog import Catalog

        cat = Catalog()
        if a.sample:
            from data.sample import ensure_sample

            ensure_sample(cat)
        syms = split_symbols(a.symbols) or None
        panel = cat.read_panel(syms, a.replay, a.end or a.replay)
        _require_bars(panel, cat, a)
        given = {"initial_cash": a.cash, "max_volume_share": a.max_volume_share, "account": a.account}
        cfg = SimConfig(slippage=params.slippage if a.slippage is None else a.slippage,
                        fee_per_share=params.fee_per_share if a.fee_per_share is None else a.fee_per_share,
                        fee_per_order=params.fee_per_order if a.fee_per_order is None else a.fee_per_order,
                        exact_prices=a.exact_prices, **{k: v for k, v in given.items() if v is not None})
        server = SimServer(panel, cfg, host=a.host, port=a.port, speed=a.speed, rate_limit=a.rate_limit)
        asyncio.run(server.serve())
    except TierlabError as e:
        print(f"live.sim: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
