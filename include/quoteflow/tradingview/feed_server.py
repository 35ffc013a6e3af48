"""The local TradingView-protocol feed under its established name; the code is in :mod:`quoteflow.tradingview.feed`."""

from quoteflow.tradingview.feed import (
    FeedConfig,
    FeedServer,
    FeedServerError,
    FeedStats,
    instrument_of,
    load_replay,
    synthetic_universe,
)

__all__ = [
    "FeedConfig",
    "FeedServer",
    "FeedServerError",
    "FeedStats",
    "instrument_of",
    "load_replay",
    "synthetic_universe",
]
