"""The default trading universe of SPEC §1 and its sector baskets (shared by the sample and the event importer)."""

from __future__ import annotations

STOCKS: tuple[str, ...] = ("NVDA", "TSLA", "AAPL", "MSFT", "AMZN", "META", "GOOGL", "AMD", "AVGO")
ETFS: tuple[str, ...] = ("SQQQ", "SOXS", "QQQ")
UNIVERSE: tuple[str, ...] = STOCKS + ETFS

MEGATECH: tuple[str, ...] = ("AAPL", "MSFT", "AMZN", "META", "GOOGL", "TSLA")
SEMIS: tuple[str, ...] = ("NVDA", "AMD", "AVGO")
