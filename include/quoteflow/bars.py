"""The Bar record (schema 1): one OHLCV bar of a symbol at a resolution, from TradingView's chart session.

The Kafka value (topic ``bars.tradingview``) is UTF-8 JSON with exactly :data:`FIELDS`, the header
``schema: bar.v1`` (:data:`BAR_HEADERS`) and the key ``"<symbol>|<resolution>"`` (:func:`bar_key`).
In Elasticsearch a bar is one document per ``(symbol, resolution, start)`` (:func:`bar_id`), written
with the Kafka offset as its external version so the newest record of a bar wins. See
``/work/notes/contracts.md`` → *Bar record*.

Validation raises :class:`InvalidBar`, a :class:`~quoteflow.quotes.InvalidQuote`, with the quote's
reason codes (``invalid_json``, ``schema``), so a bad bar is dead-lettered exactly like a bad quote.

>>> decode_bar(encode_bar(symbol="BINANCE:SOLUSDT", resolution="1", start="2026-12-02T02:41:00Z",
...     open=1.0, high=2.0, low=0.5, close=1.5, volume=1e100, closed=True, origin="history",
...     received_at="2026-12-02T02:41:07.125Z"))["volume"] is None
True
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import orjson

from quoteflow.quotes import MAX_STRING_CHARS, RFC3339_UTC, SOURCE, InvalidQuote, format_timestamp

SCHEMA_VERSION = 1
SCHEMA_HEADER = ("schema", b"bar.v1")
BAR_HEADERS = [SCHEMA_HEADER]
PRICE_FIELDS = ("open", "high", "low", "close")
ORIGINS = frozenset({"history", "live", "gap_fill"})
FIELDS = (
    "schema",
    "source",
    "symbol",
    "resolution",
    "start",
    *PRICE_FIELDS,
    "volume",
    "closed",
    "origin",
    "received_at",
)
FIELD_SET = frozenset(FIELDS)
# TradingView sends 1e100 for "no value": a volume of it becomes null; a price of it is refused.
NO_VALUE = 1e100
# A bar's open time: RFC 3339 UTC, whole seconds, "Z" (the id and the index month come from it).
START_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
# TradingView resolutions: minutes ("1", "60"), seconds ("30S"), days/weeks/months ("1D", "D", "1W", "1M").
RESOLUTION_RE = re.compile(r"^(?:\d{1,4}[SDWM]?|[DWM])$")


class InvalidBar(InvalidQuote):
    """A record that is not a valid Bar v1; ``reason`` is the DLQ code (the same codes as a quote's)."""


def bar_key(symbol: str, resolution: str) -> str:
    """The Kafka key of a bar: ``"<symbol>|<resolution>"`` (all bars of one series on one partition)."""
    return f"{symbol}|{resolution}"


def bar_id(symbol: str, resolution: str, start: str) -> str:
    """The Elasticsearch ``_id`` of a bar: ``"<symbol>-<resolution>-<start>"`` (one document per bar)."""
    return f"{symbol}-{resolution}-{start}"


def bar_start(epoch_seconds: float) -> str:
    """A bar's open time from epoch seconds (TradingView's ``timescale_update`` ``v[0]``): ``…T02:41:00Z``."""
    return format_timestamp(int(epoch_seconds))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_string(data: dict[str, Any], name: str) -> None:
    value = data[name]
    if not isinstance(value, str) or not value:
        raise InvalidBar("schema", f"{name} must be a non-empty string, got {value!r}")
    if len(value) > MAX_STRING_CHARS:
        raise InvalidBar("schema", f"{name} is {len(value)} characters, over the limit of {MAX_STRING_CHARS}")


def validate_bar(data: Any) -> dict[str, Any]:
    """Check a decoded value against Bar v1 and return it (volume 1e100 → null); raise :class:`InvalidBar`."""
    if not isinstance(data, dict):
        raise InvalidBar("schema", f"value is a JSON {type(data).__name__}, not an object")
    if data.keys() != FIELD_SET:
        unknown = sorted(set(data) - FIELD_SET)
        if unknown:
            raise InvalidBar("schema", f"unknown field(s): {', '.join(unknown)}")
        missing = [name for name in FIELDS if name not in data]
        raise InvalidBar("schema", f"missing field(s): {', '.join(missing)}")
    if data["schema"] != SCHEMA_VERSION or isinstance(data["schema"], bool):
        raise InvalidBar("schema", f"schema is {data['schema']!r}, expected {SCHEMA_VERSION}")
    if data["source"] != SOURCE:
        raise InvalidBar("schema", f"source is {data['source']!r}, expected {SOURCE!r}")
    _check_string(data, "symbol")
    _check_string(data, "resolution")
    if not RESOLUTION_RE.match(data["resolution"]):
        raise InvalidBar("schema", f"resolution {data['resolution']!r} is not a TradingView resolution (1, 60, 1D…)")
    start = data["start"]
    if not isinstance(start, str) or not START_RE.match(start):
        raise InvalidBar("schema", f"start must be RFC 3339 UTC in whole seconds ending in 'Z', got {start!r}")
    received = data["received_at"]
    if not isinstance(received, str) or not RFC3339_UTC.match(received):
        raise InvalidBar("schema", f"received_at must be an RFC 3339 UTC string, got {received!r}")
    for name in PRICE_FIELDS:
        if not _is_number(data[name]):
            raise InvalidBar("schema", f"{name} must be a finite number, got {data[name]!r}")
        if abs(data[name]) >= NO_VALUE:
            raise InvalidBar("schema", f"{name} is {data[name]!r}, TradingView's no-value marker: a bar needs prices")
    volume = data["volume"]
    if volume is not None:
        if not _is_number(volume):
            raise InvalidBar("schema", f"volume must be a finite number or null, got {volume!r}")
        if volume >= NO_VALUE:
            data["volume"] = None
    low, high, first, last = data["low"], data["high"], data["open"], data["close"]
    if not (low <= high and low <= min(first, last) and high >= max(first, last)):
        raise InvalidBar(
            "schema",
            f"prices out of order: low {low} high {high} open {first} close {last} (need low <= open, close <= high)",
        )
    if not isinstance(data["closed"], bool):
        raise InvalidBar("schema", f"closed must be true or false, got {data['closed']!r}")
    if data["origin"] not in ORIGINS:
        raise InvalidBar("schema", f"origin is {data['origin']!r}, expected one of {sorted(ORIGINS)}")
    return data


def decode_bar(raw: bytes | None) -> dict[str, Any]:
    """Kafka value bytes → validated Bar dict; raise :class:`InvalidBar` (``invalid_json`` or ``schema``)."""
    if raw is None:
        raise InvalidBar("invalid_json", "record has no value (tombstone)")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidBar("invalid_json", f"{exc}; value starts {bytes(raw[:60])!r}") from None
    return validate_bar(data)


def make_bar(
    *,
    symbol: str,
    resolution: str,
    start: str | float,
    open: float,
    high: float,
    low: float,
    close: float,
    volume: float | None,
    closed: bool,
    origin: str,
    received_at: str | None = None,
) -> dict[str, Any]:
    """A validated bar dict in contract order; ``start`` may be epoch seconds, ``received_at`` defaults to now."""
    data = {
        "schema": SCHEMA_VERSION,
        "source": SOURCE,
        "symbol": symbol,
        "resolution": resolution,
        "start": start if isinstance(start, str) else bar_start(start),
        "open": open,
        "high": high,
        "low": low,
        "close": close,
        "volume": volume,
        "closed": closed,
        "origin": origin,
        "received_at": received_at if received_at is not None else format_timestamp(time.time(), milliseconds=True),
    }
    return validate_bar(data)


def encode_bar(**fields: Any) -> bytes:
    """The Kafka value of a bar (compact UTF-8 JSON, validated); the keywords of :func:`make_bar`."""
    return orjson.dumps(make_bar(**fields))
