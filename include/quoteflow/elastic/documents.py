"""A Kafka record → the Elasticsearch document of the data contract, its index and its ``_id``.

``_id`` is ``<topic>-<partition>-<offset>``: the record's position, so writing a record again
overwrites the same document — re-runs never duplicate. The index is ``<prefix>YYYY.MM.DD`` of
``@timestamp``, which derives from the record's own content, so a record always lands in the same
index too.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from include.quoteflow.quotes import decode_quote, format_timestamp
from include.quoteflow.settings import INDEX_PREFIX, ConfigError

_INDEX_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]*$")


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


def build_document(
    quote: dict[str, Any], topic: str, partition: int, offset: int, kafka_timestamp_ms: int
) -> dict[str, Any]:
    """The Elasticsearch document: the quote plus ``@timestamp`` and ``kafka.{topic,partition,offset,timestamp}``."""
    doc = dict(quote)
    doc["@timestamp"] = quote["event_time"] or quote["received_at"]
    doc["kafka"] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp": format_timestamp(kafka_timestamp_ms / 1000, milliseconds=True),
    }
    return doc


def bulk_lines(
    value: bytes | None, topic: str, partition: int, offset: int, kafka_timestamp_ms: int, prefix: str = INDEX_PREFIX
) -> bytes:
    """One record → its two ``_bulk`` NDJSON lines (action + source); raises ``InvalidQuote`` for a bad record."""
    quote = decode_quote(value)
    doc = build_document(quote, topic, partition, offset, kafka_timestamp_ms)
    action = b'{"index":{"_index":"%s","_id":"%s"}}\n' % (
        index_name(prefix, doc["@timestamp"]).encode(),
        document_id(topic, partition, offset).encode(),
    )
    return action + orjson.dumps(doc) + b"\n"
