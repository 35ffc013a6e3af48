"""A local stand-in for ``data.tradingview.com``: tests, benchmarks and the offline demo (``make run SOURCE=replay``).

One module per concern: :mod:`.config` (what the feed does), :mod:`.server` (the protocol server),
:mod:`.replay` (a recording played back), :mod:`.walk` (the deterministic market: prices and bars),
:mod:`.synthetic` (quote ticks from the walk), :mod:`.chart` (chart sessions: history, ``du``, errors),
:mod:`.faults` (drops, stalls, garbage, outages, 429) and :mod:`.keys` (what a subscription key names).
"""

from quoteflow.tradingview.feed.config import FeedConfig, FeedServerError
from quoteflow.tradingview.feed.keys import instrument_of
from quoteflow.tradingview.feed.replay import load_replay
from quoteflow.tradingview.feed.server import FeedServer, FeedStats
from quoteflow.tradingview.feed.synthetic import synthetic_universe

__all__ = [
    "FeedConfig",
    "FeedServer",
    "FeedServerError",
    "FeedStats",
    "instrument_of",
    "load_replay",
    "synthetic_universe",
]
