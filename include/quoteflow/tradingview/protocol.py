"""TradingView websocket framing: ``~m~N~m~`` packets, heartbeats, the hello, outbound encoding.

One websocket text message carries one or more packets back to back. ``N`` is the payload
length in UTF-16 code units (JavaScript's ``String.length``), not bytes and not Python
code points: a character outside the Basic Multilingual Plane counts as two. Parsing goes
by length in one pass over the message; a malformed packet is reported, never handed on.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from typing import Any, NamedTuple

import orjson

logger = logging.getLogger(__name__)

PREFIX = "~m~"
HEARTBEAT_PREFIX = "~h~"
# Longest length prefix we believe: TradingView messages stay well under 2**24 units.
MAX_LENGTH_DIGITS = 9
EXCERPT_CHARS = 80
# A hostile message (16 MiB of "~m~9~m~") holds millions of malformed packets. Only the first
# MALFORMED_LOGGED of a message are logged one by one, then one line with the count; parsing gives
# up on a message after MAX_MALFORMED_PER_MESSAGE of them, so its cost (time, memory) stays bounded.
MALFORMED_LOGGED = 5
MAX_MALFORMED_PER_MESSAGE = 1000
TOO_MANY_MALFORMED = "too_many_malformed"
FAST_PATH_MAX_PACKETS = 10_000

# Methods a server sends (tradingview-protocol.md §6) and a client sends (§4).
SERVER_METHODS = frozenset(
    {
        "qsd",
        "quote_completed",
        "symbol_resolved",
        "series_loading",
        "timescale_update",
        "du",
        "series_timeframe",
        "series_completed",
        "series_error",
        "study_loading",
        "study_completed",
        "study_deleted",
        "study_error",
        "symbol_error",
        "critical_error",
        "protocol_error",
        "depth_symbol_error",
        "depth_symbol_cleared",
        "replay_ok",
        "replay_point",
        "replay_instance_id",
        "replay_resolutions",
        "replay_data_end",
        "replay_error",
        "protocol_switched",
        "tickmark_update",
        "index_update",
        "clear_data",
    }
)
# The chart-session methods a client sends (the feed server answers these; the rest it accepts or ignores).
CHART_METHODS = frozenset(
    {
        "chart_create_session",
        "chart_delete_session",
        "switch_timezone",
        "resolve_symbol",
        "create_series",
        "modify_series",
        "remove_series",
        "request_more_data",
        "request_more_tickmarks",
    }
)
CLIENT_METHODS = CHART_METHODS | frozenset(
    {
        "set_auth_token",
        "set_locale",
        "set_data_quality",
        "quote_create_session",
        "quote_set_fields",
        "quote_add_symbols",
        "quote_fast_symbols",
        "quote_remove_symbols",
        "quote_hibernate_all",
        "quote_delete_session",
        "create_study",
        "modify_study",
        "remove_study",
        "switch_protocol",
        "replay_create_session",
        "replay_add_series",
        "replay_reset",
        "replay_step",
        "replay_start",
        "replay_stop",
        "replay_delete_session",
    }
)

_RESYNC = re.compile(r"~m~\d{1,9}~m~")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")

HEARTBEAT = "heartbeat"
HELLO = "hello"
MESSAGE = "message"


class ProtocolError(Exception):
    """Base of the errors this package raises about the TradingView protocol."""


class Packet(NamedTuple):
    """One decoded packet: a heartbeat (``token`` = ``~h~N``), the server hello, or a method call."""

    kind: str
    method: str | None
    params: list[Any]
    data: dict[str, Any] | None
    raw: str


class MalformedPacket(NamedTuple):
    """A packet that was skipped: why, and a short excerpt of it for the log."""

    reason: str
    excerpt: str


class DecodedMessage(NamedTuple):
    """Everything one websocket message held, in order, plus what had to be skipped."""

    packets: list[Packet]
    malformed: list[MalformedPacket]


def utf16_length(text: str) -> int:
    """Length of ``text`` in UTF-16 code units, the unit of ``~m~N~m~``."""
    if text.isascii():
        return len(text)
    return len(text) + len(_ASTRAL.findall(text))


def _take_utf16(message: str, start: int, units: int) -> int:
    """End index (code points) of ``units`` UTF-16 units of ``message`` from ``start``; -1 if it runs out
    or splits a surrogate pair."""
    end = start + units
    if end > len(message):
        end = len(message)
    astral = len(_ASTRAL.findall(message, start, end))
    if not astral:
        return start + units if start + units <= len(message) else -1
    # Each astral character in the window consumes two units: walk to the exact end.
    pos = start
    remaining = units
    while remaining > 0:
        if pos >= len(message):
            return -1
        remaining -= 2 if message[pos] > "\uffff" else 1
        pos += 1
    return pos if remaining == 0 else -1


def _excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def split_packets(message: str) -> tuple[list[str], list[MalformedPacket]]:
    """Cut a websocket message into packet payloads by their UTF-16 length prefixes.

    Raw message (two packets): ``~m~4~m~~h~1~m~54~m~{"m":"set_auth_token","p":["unauthorized_user_token"]}``
    → ``["~h~1", '{"m":"set_auth_token","p":["unauthorized_user_token"]}']``. A bad, overlong or
    truncating prefix is reported as malformed and parsing resumes at the next plausible prefix. After
    :data:`MAX_MALFORMED_PER_MESSAGE` malformed packets the rest of the message is skipped as one more,
    reason ``too_many_malformed``, whose excerpt starts with how many characters were left unparsed.
    """
    ascii_only = message.isascii()
    if ascii_only:
        # Fast path, exact: split on the prefix in C and accept only if every declared length matches
        # its piece. A payload that itself contains "~m~" makes its own piece shorter than declared,
        # so such messages always fall through to the careful parser below.
        # At most FAST_PATH_MAX_PACKETS packets: a message dense with prefixes (hostile) must not become
        # millions of little strings; it takes the careful path, which gives up after enough garbage.
        # (Cut short, the split has 2 * FAST_PATH_MAX_PACKETS + 2 parts: even, so it fails the check below.)
        parts = message.split(PREFIX, 2 * FAST_PATH_MAX_PACKETS + 1)
        if not parts[0] and len(parts) % 2 == 1:
            pieces = parts[2::2]
            for digits, piece in zip(parts[1::2], pieces, strict=True):
                if not digits.isdigit() or len(digits) > MAX_LENGTH_DIGITS or int(digits) != len(piece):
                    break
            else:
                return pieces, []
    payloads: list[str] = []
    malformed: list[MalformedPacket] = []
    pos = 0
    size = len(message)
    while pos < size:
        if not message.startswith(PREFIX, pos):
            reason = "no_prefix"
            bad_from = pos
        else:
            digits_end = message.find(PREFIX, pos + 3)
            digits = message[pos + 3 : digits_end] if digits_end != -1 else ""
            if not digits or not digits.isdigit() or not digits.isascii() or len(digits) > MAX_LENGTH_DIGITS:
                reason = "bad_length"
                bad_from = pos
            else:
                start = digits_end + 3
                units = int(digits)
                if ascii_only:
                    end = start + units if start + units <= size else -1
                else:
                    end = _take_utf16(message, start, units)
                if end == -1:
                    reason = "overlong_length"
                    bad_from = pos
                elif end < size and not message.startswith(PREFIX, end):
                    # The declared length does not land on the next packet: the prefix lies.
                    reason = "length_mismatch"
                    bad_from = pos
                else:
                    payloads.append(message[start:end])
                    pos = end
                    continue
        if len(malformed) >= MAX_MALFORMED_PER_MESSAGE:
            rest = message[bad_from : bad_from + EXCERPT_CHARS]
            malformed.append(MalformedPacket(TOO_MANY_MALFORMED, f"{size - bad_from} characters skipped: {rest}"))
            break
        nxt = _RESYNC.search(message, bad_from + 1)
        stop = nxt.start() if nxt else size
        malformed.append(MalformedPacket(reason, _excerpt(message[bad_from:stop])))
        pos = stop
    return payloads, malformed


def parse_payload(payload: str) -> Packet | MalformedPacket:
    """Classify one packet payload: heartbeat, hello, or a known method call.

    Raw payloads: ``~h~7`` (heartbeat), ``{"session_id":"0.4607.904_dal-charts-free-4",...}`` (hello),
    ``{"m":"qsd","p":["qs_x",{"n":"BINANCE:SOLUSDT","s":"ok","v":{"lp":142.1}}]}`` (method).
    """
    if payload.startswith(HEARTBEAT_PREFIX):
        if payload[3:].isdigit():
            return Packet(HEARTBEAT, None, [], None, payload)
        return MalformedPacket("bad_heartbeat", _excerpt(payload))
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return MalformedPacket("not_json", _excerpt(payload))
    if not isinstance(data, dict):
        return MalformedPacket("not_object", _excerpt(payload))
    method = data.get("m")
    if method is None:
        if "session_id" in data:
            return Packet(HELLO, None, [], data, payload)
        return MalformedPacket("unknown_packet", _excerpt(payload))
    params = data.get("p")
    if not isinstance(params, list):
        return MalformedPacket("bad_params", _excerpt(payload))
    if method not in SERVER_METHODS and method not in CLIENT_METHODS:
        return MalformedPacket("unknown_method", _excerpt(payload))
    return Packet(MESSAGE, method, params, data, payload)


def decode_message(message: str) -> DecodedMessage:
    """Decode one websocket message into its packets, in order, and the malformed parts skipped.

    Raw message: ``~m~4~m~~h~3~m~60~m~{"m":"qsd","p":["qs_a",{"n":"X:Y","s":"ok","v":{"lp":1.5}}]}``
    → a heartbeat packet, then a ``qsd`` packet.
    """
    payloads, malformed = split_packets(message)
    packets: list[Packet] = []
    for payload in payloads:
        parsed = parse_payload(payload)
        if type(parsed) is Packet:
            packets.append(parsed)
        else:
            malformed.append(parsed)  # type: ignore[arg-type]
    return DecodedMessage(packets, malformed)


def log_malformed(malformed: list[MalformedPacket], where: str) -> None:
    """Log one message's skipped packets at WARNING: the first :data:`MALFORMED_LOGGED` one line each with
    their excerpt, then at most one line with how many more there were, by reason."""
    for item in malformed[:MALFORMED_LOGGED]:
        logger.warning("skipped malformed packet from %s (%s): %r", where, item.reason, item.excerpt)
    rest = malformed[MALFORMED_LOGGED:]
    if rest:
        reasons = Counter(item.reason for item in rest)
        gave_up = next((item.excerpt for item in reversed(rest) if item.reason == TOO_MANY_MALFORMED), None)
        logger.warning(
            "skipped %d more malformed packet(s) from %s in the same message (%s)%s",
            len(rest),
            where,
            ", ".join(f"{reason}={count}" for reason, count in sorted(reasons.items())),
            f"; gave up on the rest of the message: {gave_up!r}" if gave_up else "",
        )


def frame(payload: str) -> str:
    """Wrap one payload as a packet: ``~h~1`` → ``~m~4~m~~h~1``."""
    return f"{PREFIX}{utf16_length(payload)}{PREFIX}{payload}"


def encode_payload(method: str, params: list[Any]) -> str:
    """A method call as compact ASCII-only JSON, so every way of counting its length agrees."""
    return json.dumps({"m": method, "p": params}, separators=(",", ":"), ensure_ascii=True)


def encode_packet(method: str, params: list[Any]) -> str:
    """A framed method call: ``encode_packet("set_locale", ["en", "US"])`` →
    ``~m~34~m~{"m":"set_locale","p":["en","US"]}``."""
    return frame(encode_payload(method, params))
