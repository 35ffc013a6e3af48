"""Kafka reads for the live view: the newest records per partition, the indexer's lag, recent dead letters.

Everything here uses ``assign()`` and metadata calls, never ``subscribe()``: the view joins no consumer
group and commits nothing, so watching the pipeline cannot disturb it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quoteflow.bars import InvalidBar, decode_bar
from quoteflow.gaps import InvalidGap, decode_gap
from quoteflow.kafka.clients import consumer_config
from quoteflow.kafka.reader import offsets_at, topic_partitions, watermarks
from quoteflow.quotes import InvalidQuote, decode_quote

logger = logging.getLogger(__name__)

VIEWER_GROUP = "quoteflow-liveview"
# A page waits on every read: a broker that does not answer within this is reported as down, not waited for.
METADATA_TIMEOUT_S = 2.0


class KafkaViewError(RuntimeError):
    """A Kafka read for the live view failed; the message names the topic and partition."""


@dataclass(frozen=True)
class TailRecord:
    """One record read from the end of a partition; ``value`` is decoded, or ``None`` when it is not valid."""

    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    value: dict[str, Any] | None

    @property
    def quote(self) -> dict[str, Any] | None:
        """The value of a record of the quotes topic."""
        return self.value


Decoder = Callable[[bytes | None], dict[str, Any] | None]


def decode_quote_or_none(raw: bytes | None) -> dict[str, Any] | None:
    """A valid Quote, or ``None``: the indexer sends an invalid one to the DLQ; the view only skips it."""
    try:
        return decode_quote(raw)
    except InvalidQuote:
        return None


def decode_bar_or_none(raw: bytes | None) -> dict[str, Any] | None:
    """A valid Bar, or ``None`` (dead-lettered by the indexer, skipped here)."""
    try:
        return decode_bar(raw)
    except InvalidBar:
        return None


def decode_gap_or_none(raw: bytes | None) -> dict[str, Any] | None:
    """A valid gap event, or ``None`` (dead-lettered by the indexer, skipped here)."""
    try:
        return decode_gap(raw)
    except InvalidGap:
        return None


@dataclass(frozen=True)
class PartitionLag:
    """How far the indexer's committed offset is behind the end of one partition."""

    partition: int
    end_offset: int
    committed: int | None
    lag: int | None


# While the broker is down, librdkafka logs one line per reconnect attempt; its default first
# backoff (100 ms, per broker and client) floods the API server's log. The view reports the outage
# itself (503 naming Kafka), so reconnect at most once a second, backing off to 10 s.
RECONNECT_BACKOFF = {"reconnect.backoff.ms": 1000, "reconnect.backoff.max.ms": 10000}


def viewer_config(config: dict[str, Any]) -> dict[str, Any]:
    """A consumer config that reads by assignment only: its own group id, no commits, starts at the log end."""
    # A tail read ends at the log end: do not let the broker sit on the fetch.
    return consumer_config(
        config, VIEWER_GROUP, **{"auto.offset.reset": "latest", "fetch.wait.max.ms": 10, **RECONNECT_BACKOFF}
    )


def viewer_admin_config(config: dict[str, Any]) -> dict[str, Any]:
    """The view's admin client config: the connection's, with the same gentle reconnects."""
    return {**config, **RECONNECT_BACKOFF}


def tail_records(
    consumer: Any,
    topic: str,
    last_n: int = 50,
    timeout_s: float = 1.0,
    metadata_timeout_s: float = METADATA_TIMEOUT_S,
    decode: Decoder = decode_quote_or_none,
) -> list[TailRecord]:
    """The last ``last_n`` records of every partition of ``topic``, read within ``timeout_s`` (partial if slower).

    Each value goes through ``decode`` (Quotes by default; bars and gaps have their own).
    """
    from confluent_kafka import TopicPartition

    if last_n <= 0:
        raise ValueError("last_n must be positive")
    ends: dict[int, int] = {}
    starts = []
    for partition in topic_partitions(consumer, topic, metadata_timeout_s):
        low, high = watermarks(consumer, topic, partition, metadata_timeout_s)
        start = max(low, high - last_n)
        if high > start:
            ends[partition] = high
            starts.append(TopicPartition(topic, partition, start))
    if not starts:
        return []
    records: list[TailRecord] = []
    next_offset = {tp.partition: tp.offset for tp in starts}  # next offset expected per partition
    deadline = time.monotonic() + timeout_s
    consumer.assign(starts)
    try:
        while ends and time.monotonic() < deadline:
            # Ask for exactly what is missing: consume() returns as soon as that many arrived, not at its timeout.
            missing = sum(end - next_offset[p] for p, end in ends.items())
            wait = max(0.01, min(0.2, deadline - time.monotonic()))
            for msg in consumer.consume(num_messages=max(1, min(missing, 1000)), timeout=wait):
                err = msg.error()
                if err is not None:
                    raise KafkaViewError(f"tailing {msg.topic()}[{msg.partition()}]: {err}")
                end = ends.get(msg.partition())
                if end is None or msg.offset() >= end:
                    continue
                records.append(_tail_record(msg, decode))
                next_offset[msg.partition()] = msg.offset() + 1
                if msg.offset() >= end - 1:
                    del ends[msg.partition()]
    finally:
        consumer.unassign()
    if ends:
        logger.warning(
            "kafka tail of %s stopped after %.1fs with partitions %s unfinished", topic, timeout_s, sorted(ends)
        )
    return records


def _tail_record(msg: Any, decode: Decoder) -> TailRecord:
    key = msg.key()
    return TailRecord(
        partition=msg.partition(),
        offset=msg.offset(),
        timestamp_ms=int(msg.timestamp()[1]),
        key=key.decode("utf-8", "replace") if key is not None else None,
        value=decode(msg.value()),
    )


def indexer_lag(
    admin: Any, consumer: Any, topic: str, group: str, timeout_s: float = METADATA_TIMEOUT_S
) -> list[PartitionLag]:
    """Per partition: the log end offset, the ``group``'s committed offset (``None`` if never committed) and the gap."""
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition

    partitions = topic_partitions(consumer, topic, timeout_s)
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in partitions])
    future = admin.list_consumer_group_offsets([request], request_timeout=timeout_s)[group]
    try:
        committed = {tp.partition: tp.offset for tp in future.result(timeout=timeout_s).topic_partitions}
    except KafkaException as exc:
        raise KafkaViewError(f"reading committed offsets of group {group!r} on {topic}: {exc}") from exc
    except TimeoutError as exc:
        raise KafkaViewError(
            f"reading committed offsets of group {group!r} on {topic}: no answer in {timeout_s} s"
        ) from exc
    out = []
    for partition in partitions:
        end = watermarks(consumer, topic, partition, timeout_s)[1]
        offset = committed.get(partition)
        done = offset if offset is not None and offset >= 0 else None
        out.append(PartitionLag(partition, end, done, end - done if done is not None else None))
    return out


def records_since(consumer: Any, topic: str, since_ms: int, timeout_s: float = METADATA_TIMEOUT_S) -> int:
    """How many records ``topic`` received at or after ``since_ms`` (by record timestamp), over all partitions."""
    partitions = topic_partitions(consumer, topic, timeout_s)
    firsts = offsets_at(consumer, topic, partitions, since_ms, timeout_s)
    return sum(watermarks(consumer, topic, p, timeout_s)[1] - firsts[p] for p in partitions)
