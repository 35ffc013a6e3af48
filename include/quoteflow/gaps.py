"""The gap event (schema 1): a span in which the producer received nothing from the feed.

Kafka topic ``gaps.tradingview`` (LogAppendTime), key = ``gap_id``, header ``schema: gap.v1``;
value keys exactly :data:`FIELDS`. ``gap_id`` is deterministic, ``"<shard>-<cause>-<start epoch
ms>"``, so the same gap written twice is one Elasticsearch document. ``start`` is the last data
received before the gap, ``end`` the first data after it. See ``/work/notes/contracts.md`` →
*Gap event*.

>>> decode_gap(encode_gap(make_gap("disconnect", 1764643260.5, 1764643390.25, ["BINANCE:SOLUSDT"],
...     detail="connection lost", recorded_at=1764643391.0)))["gap_id"]
'0-disconnect-1764643260500'
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson

from quoteflow.quotes import MAX_STRING_CHARS, SOURCE, InvalidQuote, format_timestamp, parse_timestamp

SCHEMA_VERSION = 1
SCHEMA_HEADER = ("schema", b"gap.v1")
GAP_HEADERS = [SCHEMA_HEADER]
CAUSES = frozenset({"disconnect", "stall", "handover"})
FIELDS = ("schema", "source", "gap_id", "cause", "start", "end", "symbols", "shard", "detail", "recorded_at")
FIELD_SET = frozenset(FIELDS)
MAX_DETAIL_CHARS = 200


class InvalidGap(InvalidQuote):
    """A record that is not a valid gap event v1; ``reason`` is the DLQ code (``invalid_json``, ``schema``)."""


def gap_id(shard: str, cause: str, start_epoch: float) -> str:
    """``"<shard>-<cause>-<start epoch ms>"``: the Kafka key and Elasticsearch ``_id`` of a gap (ms cut, not rounded,
    so it names the same millisecond as the event's ``start``)."""
    return f"{shard}-{cause}-{math.floor(start_epoch * 1000)}"


def _at_ms(epoch: float) -> str:
    """Epoch seconds → RFC 3339 UTC with the millisecond :func:`gap_id` uses."""
    ms = math.floor(epoch * 1000)
    return format_timestamp(ms // 1000)[:-1] + f".{ms % 1000:03d}Z"


def make_gap(
    cause: str,
    start: float,
    end: float,
    symbols: list[str],
    *,
    shard: str = "0",
    detail: str | None = None,
    recorded_at: float | None = None,
) -> dict[str, Any]:
    """A validated gap event from epoch seconds, in contract order (``detail`` cut to 200 characters)."""
    data = {
        "schema": SCHEMA_VERSION,
        "source": SOURCE,
        "gap_id": gap_id(shard, cause, start),
        "cause": cause,
        "start": _at_ms(start),
        "end": _at_ms(end),
        "symbols": list(symbols),
        "shard": shard,
        "detail": None if detail is None else detail[:MAX_DETAIL_CHARS],
        "recorded_at": format_timestamp(time.time() if recorded_at is None else recorded_at, milliseconds=True),
    }
    return validate_gap(data)


def validate_gap(data: Any) -> dict[str, Any]:
    """Check a decoded value against gap v1 and return it; raise :class:`InvalidGap` (reason ``schema``)."""
    if not isinstance(data, dict):
        raise InvalidGap("schema", f"value is a JSON {type(data).__name__}, not an object")
    if data.keys() != FIELD_SET:
        unknown = sorted(set(data) - FIELD_SET)
        if unknown:
            raise InvalidGap("schema", f"unknown field(s): {', '.join(unknown)}")
        raise InvalidGap("schema", f"missing field(s): {', '.join(n for n in FIELDS if n not in data)}")
    if data["schema"] != SCHEMA_VERSION or isinstance(data["schema"], bool):
        raise InvalidGap("schema", f"schema is {data['schema']!r}, expected {SCHEMA_VERSION}")
    if data["source"] != SOURCE:
        raise InvalidGap("schema", f"source is {data['source']!r}, expected {SOURCE!r}")
    if data["cause"] not in CAUSES:
        raise InvalidGap("schema", f"cause is {data['cause']!r}, expected one of {sorted(CAUSES)}")
    for name in ("gap_id", "shard"):
        value = data[name]
        if not isinstance(value, str) or not value or len(value) > MAX_STRING_CHARS:
            raise InvalidGap("schema", f"{name} must be a non-empty string of at most {MAX_STRING_CHARS} characters")
    moments = {}
    for name in ("start", "end", "recorded_at"):
        value = data[name]
        if not isinstance(value, str):
            raise InvalidGap("schema", f"{name} must be an RFC 3339 UTC string, got {value!r}")
        try:
            moments[name] = parse_timestamp(value)
        except ValueError as exc:
            raise InvalidGap("schema", f"{name}: {exc}") from None
    if moments["end"] < moments["start"]:
        raise InvalidGap("schema", f"end {data['end']} is before start {data['start']}")
    symbols = data["symbols"]
    if not isinstance(symbols, list) or not all(isinstance(s, str) and s for s in symbols):
        raise InvalidGap("schema", "symbols must be a list of non-empty strings")
    detail = data["detail"]
    if detail is not None and (not isinstance(detail, str) or len(detail) > MAX_DETAIL_CHARS):
        raise InvalidGap("schema", f"detail must be null or a string of at most {MAX_DETAIL_CHARS} characters")
    return data


def encode_gap(gap: dict[str, Any]) -> bytes:
    """The Kafka value of a gap event (validated first)."""
    return orjson.dumps(validate_gap(gap))


def decode_gap(raw: bytes | None) -> dict[str, Any]:
    """Kafka value bytes → validated gap dict; raise :class:`InvalidGap` (``invalid_json`` or ``schema``)."""
    if raw is None:
        raise InvalidGap("invalid_json", "record has no value (tombstone)")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidGap("invalid_json", f"{exc}; value starts {bytes(raw[:60])!r}") from None
    return validate_gap(data)


def gap_key(gap: dict[str, Any]) -> bytes:
    """The Kafka key of a gap event: its ``gap_id`` in UTF-8."""
    return str(gap["gap_id"]).encode("utf-8")
