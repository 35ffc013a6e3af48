"""Replay for the local feed: a frames JSONL recording played back as it is, at a chosen speed.

Subscriptions and field sets shape only the synthetic feed; a replay sends its recording, with each
``qs_…`` session id rewritten to the connected client's newest quote session.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from quoteflow.tradingview.feed.config import FeedServerError
from quoteflow.tradingview.feed.keys import instrument_of
from quoteflow.tradingview.protocol import frame, split_packets

logger = logging.getLogger(__name__)

_QS_ID = re.compile(r'"qs_[A-Za-z0-9_\-]+"')
# One recorded server→client message: its capture time (None if unknown) and its packet payloads.
Recording = list[tuple[float | None, list[str]]]


def load_replay(path: str | Path) -> Recording:
    """The server→client messages of a frames JSONL file as (timestamp or None, payloads), hello excluded.

    Raw line: ``{"direction":"server->client","raw":"~m~4~m~~h~1","ts":1764300000.5}``. Unframed lines
    (payload only) are framed; lines that do not parse are skipped with a warning.
    """
    messages: Recording = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = orjson.loads(line)
        if record.get("direction") != "server->client":
            continue
        raw = record["raw"]
        if not raw.startswith("~m~"):
            raw = frame(raw)
        payloads, malformed = split_packets(raw)
        if malformed:
            logger.warning("replay line %d: %d malformed packet(s) kept out", number, len(malformed))
        payloads = [p for p in payloads if not p.startswith('{"session_id"')]
        if payloads:
            ts = record.get("ts")
            messages.append((float(ts) if isinstance(ts, (int, float)) and math.isfinite(ts) else None, payloads))
    if not messages:
        raise FeedServerError(f"replay file {path} has no server->client messages")
    return messages


def replay_symbols(messages: Recording) -> set[str]:
    """The instrument of every ``n`` key of the replay's ``qsd`` packets: the symbols this feed knows."""
    known: set[str] = set()
    for _, payloads in messages:
        for payload in payloads:
            if payload.startswith('{"m":"qsd"'):
                decoded = orjson.loads(payload)
                body = decoded["p"][1] if len(decoded.get("p", [])) > 1 else None
                instrument = (
                    instrument_of(body["n"]) if isinstance(body, dict) and isinstance(body.get("n"), str) else None
                )
                if instrument is not None:
                    known.add(instrument)
    return known


def replay_messages(
    messages: Recording, speed: float, loop: bool, session_id: Callable[[], str | None]
) -> Iterator[tuple[float, str | None]]:
    """(delay before it, framed message) for each recorded message, addressed to ``session_id()``.

    Delays follow the recorded timestamps divided by ``speed`` (0 = as fast as possible; 0.1 s when a
    timestamp is missing). With ``loop`` the recording starts over at its end.
    """
    while True:
        previous_ts: float | None = None
        for ts, payloads in messages:
            if ts is not None and previous_ts is not None:
                delay = max(0.0, ts - previous_ts)
            else:
                delay = 0.1
            previous_ts = ts
            delay = delay / speed if speed > 0 else 0.0
            qs = f'"{session_id()}"'
            yield delay, "".join(frame(_QS_ID.sub(qs, p)) for p in payloads)
        if not loop:
            return
