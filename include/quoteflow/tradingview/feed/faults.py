"""Fault injection for the local feed: drop, stall, garbage packets and lying length prefixes.

Faults hit only the first ``fault_connections`` connections (all of them when unset), so a test
can watch a client fail and then recover on a clean connection.
"""

from __future__ import annotations

import random

from quoteflow.tradingview.feed.config import FeedConfig
from quoteflow.tradingview.protocol import frame

# Packets that are not what they claim; the client must skip each and keep the rest of the message.
GARBAGE = (
    frame("this is not json"),
    frame('{"m":"no_such_method","p":[]}'),
    "~m~x1~m~{}",
    frame('{"m":"qsd","p":'),
)
_BAD_LENGTH_BODY = '{"m":"qsd","p":["qs_none",{"n":"X:Y","s":"ok","v":{"lp":1}}]}'


class Faults:
    """The faults one connection gets, by the number of data messages sent to it so far."""

    def __init__(self, config: FeedConfig, rng: random.Random, faulty: bool) -> None:
        self._config = config
        self._rng = rng
        self.faulty = faulty

    def stall_now(self, sent: int) -> bool:
        """True once ``stall_after`` messages went out: the link then goes silent, heartbeats too."""
        after = self._config.stall_after
        return self.faulty and after is not None and sent >= after

    def drop_now(self, sent: int) -> bool:
        """True once ``drop_after`` messages went out: the TCP connection is then cut."""
        after = self._config.drop_after
        return self.faulty and after is not None and sent >= after

    def inject(self, message: str, number: int) -> str:
        """Message ``number`` (1-based) with a garbage packet and/or a lying length prefix in front, as set."""
        if not self.faulty:
            return message
        config = self._config
        if config.garbage_every and number % config.garbage_every == 0:
            message = self._rng.choice(GARBAGE) + message
        if config.bad_length_every and number % config.bad_length_every == 0:
            message = f"~m~{len(_BAD_LENGTH_BODY) + 7}~m~{_BAD_LENGTH_BODY}" + message
        return message
