"""A Kafka record → the Elasticsearch document of the data contract, its index and its ``_id``.

Quotes: ``_id`` is ``<topic>-<partition>-<offset>``: the record's position, so writing a record again
overwrites the same document — re-runs never duplicate. The index is ``<prefix>YYYY.MM.DD`` of
``@timestamp``, which derives from the record's own content, so a record always lands in the same
index too.

Bars: one document per bar, ``_id = <symbol>-<resolution>-<start>`` in ``<prefix>YYYY.MM`` of
``start``, written with ``version`` = the record's offset and ``version_type=external_gte``: the
newest record of a bar wins, a re-run rewrites the same version, an older offset gets a 409 (stale).
Gaps: ``_id = gap_id`` in ``<prefix>YYYY.MM`` of ``start``, a plain index operation.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson

from quoteflow.bars import bar_id, decode_bar
from quoteflow.gaps import decode_gap
from quoteflow.quotes import (
    FIELD_SET,
    NUMBER_FIELDS_NULLABLE,
    RFC3339_UTC,
    SCHEMA_VERSION,
    SOURCE,
    STRING_FIELDS_NULLABLE,
    InvalidQuote,
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


def month_index_name(prefix: str, timestamp: str) -> str:
    """``<prefix>YYYY.MM`` for an RFC 3339 timestamp (bars and gaps: ``2026-12-02T…`` → ``…2026.12``)."""
    return f"{prefix}{timestamp[0:4]}.{timestamp[5:7]}"


def _kafka_meta(topic: str, partition: int, offset: int, kafka_timestamp_ms: int) -> dict[str, Any]:
    return {"topic": topic, "partition": partition, "offset": offset, "timestamp": kafka_time(kafka_timestamp_ms)}


# Elasticsearch refuses a longer _id for the whole bulk request (not per item): such a record must not reach it.
MAX_ID_BYTES = 512


def _checked_id(doc_id: str) -> str:
    size = len(doc_id.encode("utf-8"))
    if size > MAX_ID_BYTES:
        raise InvalidQuote(
            "schema", f"document id {doc_id[:80]!r}... is {size} bytes in UTF-8, over Elasticsearch's {MAX_ID_BYTES}"
        )
    return doc_id


def bar_document_id(doc: dict[str, Any]) -> str:
    """The ``_id`` of a (validated) bar: ``<symbol>-<resolution>-<start>``."""
    return bar_id(doc["symbol"], doc["resolution"], doc["start"])


def bar_lines(
    value: bytes | None, topic: str, partition: int, offset: int, kafka_timestamp_ms: int, prefix: str
) -> bytes:
    """One bar record → its ``_bulk`` lines, versioned by offset (``external_gte``); ``InvalidBar`` for a bad one."""
    doc = decode_bar(value)
    doc["@timestamp"] = doc["start"]
    doc["kafka"] = _kafka_meta(topic, partition, offset, kafka_timestamp_ms)
    action = {
        "index": {
            "_index": month_index_name(prefix, doc["start"]),
            "_id": _checked_id(bar_document_id(doc)),  # may hold '"' ("={...}" symbol specs): JSON-encoded
            "version": offset,
            "version_type": "external_gte",
        }
    }
    return orjson.dumps(action) + b"\n" + orjson.dumps(doc) + b"\n"


def gap_lines(
    value: bytes | None, topic: str, partition: int, offset: int, kafka_timestamp_ms: int, prefix: str
) -> bytes:
    """One gap event → its ``_bulk`` lines (``_id = gap_id``, plain index); ``InvalidGap`` for a bad one."""
    doc = decode_gap(value)
    doc["@timestamp"] = doc["start"]
    doc["kafka"] = _kafka_meta(topic, partition, offset, kafka_timestamp_ms)
    action = {"index": {"_index": month_index_name(prefix, doc["start"]), "_id": _checked_id(doc["gap_id"])}}
    return orjson.dumps(action) + b"\n" + orjson.dumps(doc) + b"\n"
