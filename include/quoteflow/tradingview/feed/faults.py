"""Fault injection for the local feed: drop, stall, garbage packets, lying length prefixes, outages, 429s.

Per-connection faults hit only the first ``fault_connections`` connections (all of them when unset), so a test
can watch a client fail and then recover on a clean connection.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import stat
import threading

from quoteflow.tradingview.feed.config import FeedConfig
from quoteflow.tradingview.protocol import frame

# Packets that are not what they claim; the client must skip each and keep the rest of the message.
GARBAGE = (
    frame("this is not json"),
    frame('{"m":"no_such_method","p":[]}'),
    "~m~x1~m~{}",
    frame('{"m":"qsd","p":'),
)
logger = logging.getLogger(__name__)
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


class Outages:
    """Windows during which the feed is down: open connections are cut and upgrades answered 503.

    Scheduled ones come from ``outage:<after_s>:<duration_s>`` (real seconds after the server started);
    :meth:`start` opens one now (the control file's ``outage <s>``, or a test), :meth:`end` closes them all.
    """

    def __init__(self, scheduled: tuple[tuple[float, float], ...], started: float) -> None:
        self._windows = [(started + after, started + after + duration) for after, duration in scheduled]
        self._lock = threading.Lock()

    def active(self, now: float) -> bool:
        """True while ``now`` (``time.monotonic()``) falls in an outage."""
        with self._lock:
            return any(begin <= now < end for begin, end in self._windows)

    def start(self, duration: float, now: float) -> None:
        with self._lock:
            self._windows.append((now, now + duration))

    def end(self, now: float) -> None:
        with self._lock:
            self._windows = [(b, min(e, now)) for b, e in self._windows]


class HandshakeLimiter:
    """At most ``limit`` accepted upgrades in any sliding ``window`` seconds; beyond it TradingView's 429."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._accepted: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def admit(self, now: float) -> float | None:
        """None if this upgrade may go ahead (and it is counted); else the seconds until a slot frees."""
        with self._lock:
            while self._accepted and now - self._accepted[0] >= self.window:
                self._accepted.popleft()
            if len(self._accepted) < self.limit:
                self._accepted.append(now)
                return None
            return self._accepted[0] + self.window - now


class ControlFile:
    """Runtime commands from a file only the server's user can write: no port, no secret.

    Each line appended is run once: ``outage <seconds>`` or ``outage-end``. A file that is not a
    regular file owned by this uid with mode 0600 (no group or other bits) is refused and logged.
    Truncating the file starts the line count over.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._done = 0
        self._refused: tuple[int, int] | None = None

    def _refuse(self, why: str, state: tuple[int, int]) -> None:
        """Log a refused control file once per change of it."""
        if self._refused != state:
            self._refused = state
            logger.warning("feed: control file %s refused: it %s (fix: chmod 600 %s)", self.path, why, self.path)

    def poll(self) -> list[list[str]]:
        """The commands appended since the last poll, each split into words."""
        try:
            # O_NOFOLLOW + fstat: the file checked is the file read (a symlink swapped in is refused).
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._refuse(f"cannot be opened without following links ({exc.strerror})", (0, 0))
            return []
        with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                self._refuse("is not a regular file owned by this uid with mode 0600", (st.st_mtime_ns, st.st_mode))
                return []
            lines = [line.split() for line in handle.read().splitlines()]
        if len(lines) < self._done:
            self._done = 0
        new = [words for words in lines[self._done :] if words]
        self._done = len(lines)
        return new
