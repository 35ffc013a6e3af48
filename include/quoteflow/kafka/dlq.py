"""Dead letters: records that are not valid Quotes, or that Elasticsearch rejects, with origin and reason.

A dead letter keeps the original key and value bytes untouched; its headers say where it came
from (``origin.topic``, ``origin.partition``, ``origin.offset``) and why (``error.reason``, a short
code, and ``error.detail``). The writer is idempotent (``acks=all``) and :meth:`DeadLetterWriter.flush`
raises unless every dead letter was acknowledged, so a window never completes with a lost one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

DETAIL_MAX_CHARS = 1000
FLUSH_TIMEOUT_S = 30.0


class DeadLetterError(RuntimeError):
    """Dead letters could not be delivered; the window must not complete."""


@dataclass(frozen=True)
class DeadLetter:
    """A dead letter as read back from the DLQ topic."""

    origin_topic: str
    origin_partition: int
    origin_offset: int
    reason: str
    detail: str
    key: bytes | None
    value: bytes | None
    dlq_partition: int
    dlq_offset: int

    def summary(self) -> dict[str, Any]:
        """Plain dict for listings (value shortened)."""
        value = self.value or b""
        return {
            "origin": f"{self.origin_topic}-{self.origin_partition}-{self.origin_offset}",
            "reason": self.reason,
            "detail": self.detail,
            "key": self.key.decode("utf-8", "replace") if self.key is not None else None,
            "value_excerpt": value[:120].decode("utf-8", "replace"),
            "dlq": f"{self.dlq_partition}:{self.dlq_offset}",
        }


@dataclass(frozen=True, slots=True)
class DeadLetterDraft:
    """A record on its way to the DLQ: original bytes, origin, reason, and its Kafka timestamp."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    reason: str
    detail: str
    timestamp_ms: int


def producer_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """An idempotent producer config (``acks=all``) from a Kafka connection config."""
    drop = {"group.id", "auto.offset.reset", "enable.auto.commit", "enable.auto.offset.store", "isolation.level"}
    out = {k: v for k, v in config.items() if k not in drop and not k.startswith("enable.partition")}
    out.update({"enable.idempotence": True, "acks": "all", "linger.ms": 20})
    return out


class DeadLetterWriter:
    """Writes dead letters to ``topic``; create lazily, call :meth:`flush` before declaring a window done."""

    def __init__(self, config: Mapping[str, Any], topic: str) -> None:
        if not topic:
            raise ValueError("dead-letter topic name is empty")
        self._config = producer_config(config)
        self.topic = topic
        self._producer: Any = None
        self._failures: list[str] = []
        self.sent = 0

    def _client(self) -> Any:
        if self._producer is None:
            from confluent_kafka import Producer

            self._producer = Producer(self._config)
        return self._producer

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failures.append(str(err))

    def send(
        self,
        *,
        key: bytes | None,
        value: bytes | None,
        origin_topic: str,
        origin_partition: int,
        origin_offset: int,
        reason: str,
        detail: str,
    ) -> None:
        """Queue one dead letter (original bytes plus origin and reason headers)."""
        headers = [
            ("origin.topic", origin_topic.encode()),
            ("origin.partition", str(origin_partition).encode()),
            ("origin.offset", str(origin_offset).encode()),
            ("error.reason", reason.encode()),
            ("error.detail", detail[:DETAIL_MAX_CHARS].encode("utf-8", "replace")),
        ]
        producer = self._client()
        while True:
            try:
                producer.produce(self.topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
                break
            except BufferError:
                producer.poll(0.5)  # local queue full: serve callbacks, then try again
        producer.poll(0)
        self.sent += 1

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Wait until every dead letter is acknowledged; raise :class:`DeadLetterError` otherwise."""
        if self._producer is None:
            return
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise DeadLetterError(f"{remaining} dead letter(s) to {self.topic!r} not delivered within {timeout_s}s")
        if self._failures:
            raise DeadLetterError(
                f"{len(self._failures)} dead letter(s) to {self.topic!r} failed, first: {self._failures[0]}"
            )


def _header(headers: list[tuple[str, bytes]] | None, name: str) -> str:
    for key, value in headers or ():
        if key == name:
            return value.decode("utf-8", "replace") if value is not None else ""
    return ""


def to_dead_letter(msg: Any) -> DeadLetter:
    """A consumed DLQ message → :class:`DeadLetter` (missing headers become empty / -1)."""
    headers = msg.headers()

    def as_int(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            return -1

    return DeadLetter(
        origin_topic=_header(headers, "origin.topic"),
        origin_partition=as_int(_header(headers, "origin.partition")),
        origin_offset=as_int(_header(headers, "origin.offset")),
        reason=_header(headers, "error.reason"),
        detail=_header(headers, "error.detail"),
        key=msg.key(),
        value=msg.value(),
        dlq_partition=msg.partition(),
        dlq_offset=msg.offset(),
    )


def read_dead_letters(consumer: Any, topic: str) -> Iterator[DeadLetter]:
    """Every dead letter currently in ``topic`` (low → high watermark of each partition)."""
    from include.quoteflow.kafka.ranges import PartitionRange, read_ranges, topic_partitions, watermarks

    ranges = []
    for p in topic_partitions(consumer, topic):
        low, high = watermarks(consumer, topic, p)
        ranges.append(PartitionRange(topic, p, low, high))
    for batch in read_ranges(consumer, ranges):
        for msg in batch:
            yield to_dead_letter(msg)


def origins_since(consumer: Any, dlq_topic: str, since_ms: int) -> set[tuple[str, int, int]]:
    """Origins ``(topic, partition, offset)`` of the dead letters written to ``dlq_topic`` since ``since_ms``."""
    from include.quoteflow.kafka.ranges import PartitionRange, offsets_at, read_ranges, topic_partitions, watermarks

    parts = topic_partitions(consumer, dlq_topic)
    starts = offsets_at(consumer, dlq_topic, parts, max(0, since_ms))
    ranges = [PartitionRange(dlq_topic, p, starts[p], watermarks(consumer, dlq_topic, p)[1]) for p in parts]
    present: set[tuple[str, int, int]] = set()
    for batch in read_ranges(consumer, ranges):
        for msg in batch:
            letter = to_dead_letter(msg)
            present.add((letter.origin_topic, letter.origin_partition, letter.origin_offset))
    return present


def dead_lettered_offsets(consumer: Any, dlq_topic: str, origin_topic: str) -> dict[int, set[int]]:
    """Per origin partition, the offsets of ``origin_topic`` that are in the DLQ (they are not in Elasticsearch)."""
    out: dict[int, set[int]] = {}
    for letter in read_dead_letters(consumer, dlq_topic):
        if letter.origin_topic == origin_topic and letter.origin_offset >= 0:
            out.setdefault(letter.origin_partition, set()).add(letter.origin_offset)
    return out


def list_dead_letters(
    config: Mapping[str, Any], dlq_topic: str, *, reason: str | None = None, limit: int = 50
) -> dict[str, Any]:
    """Count dead letters by reason and show up to ``limit`` of them (newest origin wins per duplicate)."""
    from include.quoteflow.kafka.ranges import make_consumer

    consumer = make_consumer(config, "quoteflow-dlq-list")
    try:
        letters = {
            (d.origin_topic, d.origin_partition, d.origin_offset): d
            for d in read_dead_letters(consumer, dlq_topic)
            if reason is None or d.reason == reason
        }
    finally:
        consumer.close()
    by_reason: dict[str, int] = {}
    for letter in letters.values():
        by_reason[letter.reason] = by_reason.get(letter.reason, 0) + 1
    shown = [d.summary() for d in list(letters.values())[: max(0, limit)]]
    return {"dead_letters": len(letters), "by_reason": by_reason, "shown": shown}


def replay_dead_letters(
    config: Mapping[str, Any],
    dlq_topic: str,
    target_topic: str,
    *,
    reason: str | None = None,
    group_id: str = "quoteflow-dlq-replay",
) -> dict[str, Any]:
    """Re-produce dead letters not replayed before (after the group's committed DLQ offsets) into ``target_topic``.

    Each origin is replayed once even if it was dead-lettered several times (window re-runs); the
    replay group's offsets are committed only after every replayed record was acknowledged.
    """
    from confluent_kafka import Producer, TopicPartition

    from include.quoteflow.kafka.ranges import PartitionRange, make_consumer, read_ranges, topic_partitions, watermarks

    consumer = make_consumer(config, group_id)
    failures: list[str] = []
    replayed = skipped = 0
    try:
        parts = topic_partitions(consumer, dlq_topic)
        committed = {
            tp.partition: tp.offset for tp in consumer.committed([TopicPartition(dlq_topic, p) for p in parts])
        }
        ranges = []
        for p in parts:
            low, high = watermarks(consumer, dlq_topic, p)
            ranges.append(PartitionRange(dlq_topic, p, max(low, committed.get(p, -1)), high))
        seen: set[tuple[str, int, int]] = set()
        producer = Producer(producer_config(config))

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        for batch in read_ranges(consumer, ranges):
            for msg in batch:
                letter = to_dead_letter(msg)
                origin = (letter.origin_topic, letter.origin_partition, letter.origin_offset)
                if (reason is not None and letter.reason != reason) or origin in seen:
                    skipped += 1
                    continue
                seen.add(origin)
                headers: list[tuple[str, str | bytes | None]] = [("replay.origin", "-".join(map(str, origin)).encode())]
                producer.produce(
                    target_topic, key=letter.key, value=letter.value, headers=headers, on_delivery=on_delivery
                )
                producer.poll(0)
                replayed += 1
        if producer.flush(FLUSH_TIMEOUT_S) or failures:
            raise DeadLetterError(f"replay to {target_topic!r} not fully acknowledged: {failures[:1] or 'timeout'}")
        ends = [TopicPartition(dlq_topic, r.partition, r.end) for r in ranges if r.size > 0]
        if ends:
            consumer.commit(offsets=ends, asynchronous=False)
    finally:
        consumer.close()
    logger.info("replayed %s dead letter(s) from %s into %s (%s skipped)", replayed, dlq_topic, target_topic, skipped)
    return {"replayed": replayed, "skipped": skipped, "target": target_topic}
