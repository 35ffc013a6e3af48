"""A Kafka record → the Elasticsearch document of the data contract, its index and its ``_id``.

``_id`` is ``<topic>-<partition>-<offset>``: the record's position, so writing a record again
overwrites the same document — re-runs never duplicate. The index is ``<prefix>YYYY.MM.DD`` of
``@timestamp``, which derives from the record's own content, so a record always lands in the same
index too.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson

from quoteflow.quotes import (
    FIELD_SET,
    NUMBER_FIELDS_NULLABLE,
    RFC3339_UTC,
    SCHEMA_VERSION,
    SOURCE,
    STRING_FIELDS_NULLABLE,
    decode_quote,
    format_timestamp,
)
from quoteflow.settings import INDEX_PREFIX, ConfigError

_INDEX_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]*$")
_NUMBER = (float, int)
_isfinite = math.isfinite


def _valid_time(text: Any) -> bool:
    if type(text) is not str or not RFC3339_UTC.match(text):
        return False
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def fast_decode(raw: bytes | None) -> dict[str, Any]:
    """:func:`decode_quote`, with a quick path for the common valid record; anything unusual takes the full path.

    The quick path only *accepts* records the full validator accepts too (exact field set, exact
    types); every other record is handed to :func:`decode_quote`, which decides and explains.
    """
    if raw is not None:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if type(data) is dict and data.keys() == FIELD_SET:
            get = data.__getitem__
            price = get("price")
            ok = (
                type(get("schema")) is int
                and get("schema") == SCHEMA_VERSION
                and get("source") == SOURCE
                and type(get("symbol")) is str
                and type(get("exchange")) is str
                and type(get("ticker")) is str
                and get("symbol") != ""
                and get("exchange") != ""
                and get("ticker") != ""
                and type(price) in _NUMBER
                and _isfinite(price)
            )
            if ok:
                for name in NUMBER_FIELDS_NULLABLE:
                    value = get(name)
                    if value is not None and (type(value) not in _NUMBER or not _isfinite(value)):
                        ok = False
                        break
            if ok:
                for name in STRING_FIELDS_NULLABLE:
                    value = get(name)
                    if value is not None and type(value) is not str:
                        ok = False
                        break
            event_time = get("event_time")
            if ok and (event_time is None or _valid_time(event_time)) and _valid_time(get("received_at")):
                return data
    return decode_quote(raw)


@lru_cache(maxsize=4096)
def _second_text(epoch_second: int) -> str:
    return format_timestamp(epoch_second)[:-1]


def kafka_time(epoch_ms: int) -> str:
    """Epoch milliseconds → RFC 3339 UTC with milliseconds (cached per second: records share seconds)."""
    return f"{_second_text(epoch_ms // 1000)}.{epoch_ms % 1000:03d}Z"


def check_index_prefix(prefix: str) -> str:
    """Return ``prefix`` if it makes valid index names; raise :class:`ConfigError` otherwise."""
    if not _INDEX_PREFIX_RE.match(prefix):
        raise ConfigError(f"index prefix {prefix!r} must be lowercase letters, digits, '.', '_', '+', '-'")
    return prefix


def document_id(topic: str, partition: int, offset: int) -> str:
    """The deterministic ``_id`` of a record: ``<topic>-<partition>-<offset>``."""
    return f"{topic}-{partition}-{offset}"


def index_name(prefix: str, timestamp: str) -> str:
    """``<prefix>YYYY.MM.DD`` for an RFC 3339 timestamp (``2026-11-28T…`` → ``…2026.11.28``)."""
    return f"{prefix}{timestamp[0:4]}.{timestamp[5:7]}.{timestamp[8:10]}"


def bulk_lines(
    value: bytes | None, topic: str, partition: int, offset: int, kafka_timestamp_ms: int, prefix: str = INDEX_PREFIX
) -> bytes:
    """One record → its two ``_bulk`` NDJSON lines (action + source); raises ``InvalidQuote`` for a bad record."""
    doc = fast_decode(value)
    doc["@timestamp"] = doc["event_time"] or doc["received_at"]
    doc["kafka"] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp": kafka_time(kafka_timestamp_ms),
    }
    action = b'{"index":{"_index":"%s","_id":"%s"}}\n' % (
        index_name(prefix, doc["@timestamp"]).encode(),
        document_id(topic, partition, offset).encode(),
    )
    return action + orjson.dumps(doc) + b"\n"
