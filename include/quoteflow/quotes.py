"""The Quote record (schema 1): the one shape that travels from the producer to Elasticsearch.

The Kafka value is UTF-8 JSON of :class:`Quote` with the header ``schema: quote.v1``;
the key is the subscribed symbol. See ``DESIGN.md`` → *Data contract*.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

SCHEMA_VERSION = 1
SCHEMA_HEADER = ("schema", b"quote.v1")
SOURCE = "tradingview"

NUMBER_FIELDS_NULLABLE = (
    "change",
    "change_percent",
    "volume",
    "bid",
    "ask",
    "high",
    "low",
    "open",
    "prev_close",
)
STRING_FIELDS_NULLABLE = ("currency", "update_mode")
# The longest string a Quote carries (characters): the producer cuts feed strings (currency,
# update_mode) to it and refuses longer symbols, so a record stays far below Kafka's size limits.
MAX_STRING_CHARS = 256
FIELDS = (
    "schema",
    "source",
    "symbol",
    "exchange",
    "ticker",
    "price",
    *NUMBER_FIELDS_NULLABLE,
    *STRING_FIELDS_NULLABLE,
    "event_time",
    "received_at",
)
# The one definition of the field set and of the timestamp shape; the indexer's quick path
# (``elastic.documents.fast_decode``) checks against these same objects.
FIELD_SET = frozenset(FIELDS)

# RFC 3339 in UTC, as this module writes it: seconds, optional fraction, "Z".
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")


class InvalidQuote(ValueError):
    """A record that is not a valid Quote v1; ``reason`` is the short DLQ code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Quote:
    """One quote as the producer emits it (schema 1); nullable fields are ``None`` when unknown."""

    symbol: str
    exchange: str
    ticker: str
    price: float
    received_at: str
    change: float | None = None
    change_percent: float | None = None
    volume: float | None = None
    bid: float | None = None
    ask: float | None = None
    high: float | None = None
    low: float | None = None
    open: float | None = None
    prev_close: float | None = None
    currency: str | None = None
    update_mode: str | None = None
    event_time: str | None = None
    schema: int = SCHEMA_VERSION
    source: str = SOURCE

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict in contract field order."""
        data = asdict(self)
        return {name: data[name] for name in FIELDS}

    def to_json(self) -> bytes:
        """The Kafka value: compact UTF-8 JSON."""
        return orjson.dumps(self.to_dict())


def split_symbol(symbol: str) -> tuple[str, str]:
    """``EXCHANGE:TICKER`` → ``(exchange, ticker)``; ``=``-spec symbols use their ``symbol`` key.

    >>> split_symbol('={"symbol":"BINANCE:SOLUSDT","session":"regular"}')
    ('BINANCE', 'SOLUSDT')
    """
    plain = symbol
    if symbol.startswith("="):
        try:
            spec = orjson.loads(symbol[1:])
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"symbol spec {symbol!r} is not valid JSON: {exc}") from exc
        if not isinstance(spec, dict) or not isinstance(spec.get("symbol"), str):
            raise ValueError(f"symbol spec {symbol!r} has no string 'symbol' key")
        plain = spec["symbol"]
    exchange, sep, ticker = plain.partition(":")
    if not sep or not exchange or not ticker:
        raise ValueError(f"symbol {symbol!r} is not of the form EXCHANGE:TICKER")
    return exchange, ticker


def format_timestamp(epoch_seconds: float, *, milliseconds: bool = False) -> str:
    """Epoch seconds → RFC 3339 UTC (``2025-12-18T04:10:47Z``, or with ``.438`` when ``milliseconds``)."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    if milliseconds:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> datetime:
    """RFC 3339 UTC (as written by :func:`format_timestamp`) → aware ``datetime``."""
    if not RFC3339_UTC.match(text):
        raise ValueError(f"{text!r} is not an RFC 3339 UTC timestamp ending in 'Z'")
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_quote(data: Any) -> dict[str, Any]:
    """Check a decoded value against Quote v1 and return it; raise :class:`InvalidQuote` (reason ``schema``)."""
    if not isinstance(data, dict):
        raise InvalidQuote("schema", f"value is a JSON {type(data).__name__}, not an object")
    unknown = sorted(set(data) - FIELD_SET)
    if unknown:
        raise InvalidQuote("schema", f"unknown field(s): {', '.join(unknown)}")
    missing = [name for name in FIELDS if name not in data]
    if missing:
        raise InvalidQuote("schema", f"missing field(s): {', '.join(missing)}")
    if data["schema"] != SCHEMA_VERSION or isinstance(data["schema"], bool):
        raise InvalidQuote("schema", f"schema is {data['schema']!r}, expected {SCHEMA_VERSION}")
    if data["source"] != SOURCE:
        raise InvalidQuote("schema", f"source is {data['source']!r}, expected {SOURCE!r}")
    for name in ("symbol", "exchange", "ticker"):
        if not isinstance(data[name], str) or not data[name]:
            raise InvalidQuote("schema", f"{name} must be a non-empty string, got {data[name]!r}")
    if not _is_number(data["price"]):
        raise InvalidQuote("schema", f"price must be a finite number, got {data['price']!r}")
    for name in NUMBER_FIELDS_NULLABLE:
        value = data[name]
        if value is not None and not _is_number(value):
            raise InvalidQuote("schema", f"{name} must be a finite number or null, got {value!r}")
    for name in STRING_FIELDS_NULLABLE:
        value = data[name]
        if value is not None and not isinstance(value, str):
            raise InvalidQuote("schema", f"{name} must be a string or null, got {value!r}")
    for name, nullable in (("event_time", True), ("received_at", False)):
        value = data[name]
        if value is None and nullable:
            continue
        if not isinstance(value, str):
            raise InvalidQuote("schema", f"{name} must be an RFC 3339 UTC string, got {value!r}")
        try:
            parse_timestamp(value)
        except ValueError as exc:
            raise InvalidQuote("schema", f"{name}: {exc}") from None
    return data


def decode_quote(raw: bytes | None) -> dict[str, Any]:
    """Kafka value bytes → validated Quote dict; raise :class:`InvalidQuote` (``invalid_json`` or ``schema``)."""
    if raw is None:
        raise InvalidQuote("invalid_json", "record has no value (tombstone)")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidQuote("invalid_json", f"{exc}; value starts {bytes(raw[:60])!r}") from None
    return validate_quote(data)
