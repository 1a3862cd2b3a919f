"""Per-symbol asset flags the sim reports and enforces (shortable, easy_to_borrow, marginable, fractionable, exchange).

A small fixed table in the spirit of Alpaca's /v2/assets for the symbols tierlab trades; a symbol not in it
gets DEFAULT (an easy-to-borrow, marginable, fractionable NASDAQ stock). Tests and callers may pass
their own table (SimEngine(assets=...)) to replay a hard-to-borrow or non-fractionable name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class AssetFlags:
    """What Alpaca says about one asset; `leverage` (1, 2, 3) sets the long maintenance margin of an ETF."""

    exchange: str = "NASDAQ"
    shortable: bool = True
    easy_to_borrow: bool = True
    marginable: bool = True
    fractionable: bool = True
    leverage: int = 1


DEFAULT = AssetFlags()

TABLE: dict[str, AssetFlags] = {
    "AAPL": AssetFlags(), "MSFT": AssetFlags(), "NVDA": AssetFlags(), "AMZN": AssetFlags(), "META": AssetFlags(),
    "GOOGL": AssetFlags(), "AMD": AssetFlags(), "AVGO": AssetFlags(), "TSLA": AssetFlags(), "QQQ": AssetFlags(),
    "SPY": AssetFlags(exchange="ARCA"),
    "SQQQ": AssetFlags(leverage=3),
    "TQQQ": AssetFlags(leverage=3),
    "SOXS": AssetFlags(exchange="ARCA", easy_to_borrow=False, leverage=3),
    "SOXL": AssetFlags(exchange="ARCA", leverage=3),
    "GME": AssetFlags(exchange="NYSE", easy_to_borrow=False),
    "BRK.A": AssetFlags(exchange="NYSE", fractionable=False),
}


def flags_for(symbol: str, overrides: Mapping[str, AssetFlags] | None = None) -> AssetFlags:
    """The flags of `symbol`: the caller's table first, then TABLE, then DEFAULT."""
    if overrides and symbol in overrides:
        return overrides[symbol]
    return TABLE.get(symbol, DEFAULT)
