"""Dead letters: records that are not valid Quotes, or that Elasticsearch rejects, with origin and reason.

A dead letter keeps the original key and value bytes untouched; its headers say where it came
from (``origin.topic``, ``origin.partition``, ``origin.offset``) and why (``error.reason``, a short
code, and ``error.detail``). The writer is idempotent (``acks=all``) and :meth:`DeadLetterWriter.flush`
raises unless every dead letter was acknowledged, so a window never completes with a lost one.

A record near the quotes topic's size limit no longer fits once the headers are added, and the DLQ
topic's own ``max.message.bytes`` may be smaller still. Such a letter is written with reason
``too_large``: its value (and a huge key) cut to an excerpt, the original sizes and reason in
``error.original_size``, ``error.original_key_size`` and ``error.original_reason``; the full record
stays readable at its origin while the quotes topic retains it. The writer reads the DLQ topic's
limit before its first letter, and should the broker still refuse one as too large (the limit
changed, or could not be read), it re-sends that letter cut to half the size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any

from quoteflow.kafka import clients
from quoteflow.kafka.admin import describe_topic_config
from quoteflow.kafka.clients import admin_client, produce_bounded, producer_config
from quoteflow.kafka.reader import PartitionRange, offsets_at, read_ranges, topic_partitions, watermarks

logger = logging.getLogger(__name__)

DETAIL_MAX_CHARS = 1000
FLUSH_TIMEOUT_S = 30.0
TOO_LARGE = "too_large"
# What a too_large letter keeps: an excerpt to recognise the record by, not a copy (its origin has that).
TOO_LARGE_VALUE_BYTES = 64 * 1024
TOO_LARGE_KEY_BYTES = 1024
# librdkafka's own default message.max.bytes: the limit assumed when the DLQ topic's cannot be read.
FALLBACK_MAX_MESSAGE_BYTES = 1_000_000
# librdkafka checks each message against message.max.bytes with its own worst-case framing estimate.
CLIENT_FRAMING_SLACK = 1024
# Re-sends of a letter the broker still refused as too large, each at half the size.
MAX_SHRINKS = 6
MIN_LIMIT_BYTES = 1024
# A Kafka v2 record batch header: base offset, length, epoch, magic, crc, attributes, deltas, ids, count.
BATCH_HEADER_BYTES = 61
REPLAY_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
REPLAY_TIMEOUT_S = 15.0
# Letters are few and small: no compression (the size checks above are of uncompressed batches).
LETTER_PRODUCER_DEFAULTS: dict[str, Any] = {"linger.ms": 20}

Headers = list[tuple[str, bytes | None]]


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
    original_size: int | None = None
    original_reason: str = ""

    @property
    def truncated(self) -> bool:
        """True for a ``too_large`` letter: its value is an excerpt, not the original bytes."""
        return self.original_size is not None

    def summary(self) -> dict[str, Any]:
        """Plain dict for listings (value shortened)."""
        value = self.value or b""
        out: dict[str, Any] = {
            "origin": f"{self.origin_topic}-{self.origin_partition}-{self.origin_offset}",
            "reason": self.reason,
            "detail": self.detail,
            "key": self.key[:120].decode("utf-8", "replace") if self.key is not None else None,
            "value_excerpt": value[:120].decode("utf-8", "replace"),
            "dlq": f"{self.dlq_partition}:{self.dlq_offset}",
        }
        if self.truncated:
            out.update(original_size=self.original_size, original_reason=self.original_reason)
        return out


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


def _varint_bytes(n: int) -> int:
    zigzag = (n << 1) ^ (n >> 63)
    size = 1
    while zigzag >= 0x80:
        zigzag >>= 7
        size += 1
    return size


def _field_bytes(data: bytes | None) -> int:
    return _varint_bytes(-1) if data is None else _varint_bytes(len(data)) + len(data)


def record_batch_bytes(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """The size of an uncompressed one-record v2 batch: what the broker compares with ``max.message.bytes``."""
    body = 3  # attributes, timestamp delta 0, offset delta 0
    body += _field_bytes(key) + _field_bytes(value) + _varint_bytes(len(headers))
    for name, data in headers:
        body += _field_bytes(name.encode()) + _field_bytes(data)
    return BATCH_HEADER_BYTES + _varint_bytes(body) + body


def _origin_headers(letter: DeadLetterDraft) -> Headers:
    return [
        ("origin.topic", letter.topic.encode()),
        ("origin.partition", str(letter.partition).encode()),
        ("origin.offset", str(letter.offset).encode()),
    ]


def _detail(text: str) -> bytes:
    return text[:DETAIL_MAX_CHARS].encode("utf-8", "replace")


def fit_letter(letter: DeadLetterDraft, limit: int) -> tuple[bytes | None, bytes | None, Headers]:
    """Key, value and headers as written: whole if they fit in ``limit`` bytes, else a ``too_large`` excerpt."""
    headers = _origin_headers(letter) + [
        ("error.reason", letter.reason.encode()),
        ("error.detail", _detail(letter.detail)),
    ]
    size = record_batch_bytes(letter.key, letter.value, headers)
    if size <= limit:
        return letter.key, letter.value, headers
    key, value = letter.key, letter.value
    key_size, value_size = len(key or b""), len(value or b"")
    key = key[:TOO_LARGE_KEY_BYTES] if key is not None else None
    value = value[:TOO_LARGE_VALUE_BYTES] if value is not None else None
    detail = (
        f"dead letter of {size} bytes exceeds the DLQ topic's max.message.bytes ({limit}): value of {value_size} "
        f"bytes and key of {key_size} bytes cut to an excerpt; the whole record is at its origin "
        f"{letter.topic}[{letter.partition}]@{letter.offset} while retained. "
        f"Original reason {letter.reason}: {letter.detail}"
    )
    for _ in range(3):  # cut the value, then the key, then the detail: the origin and reason always stay
        headers = _origin_headers(letter) + [
            ("error.reason", TOO_LARGE.encode()),
            ("error.detail", _detail(detail)),
            ("error.original_reason", letter.reason.encode()),
            ("error.original_size", str(value_size).encode()),
            ("error.original_key_size", str(key_size).encode()),
        ]
        over = record_batch_bytes(key, value, headers) - limit
        while over > 0 and value:
            value = value[: max(0, len(value) - over)]
            over = record_batch_bytes(key, value, headers) - limit
        while over > 0 and key:
            key = key[: max(0, len(key) - over)]
            over = record_batch_bytes(key, value, headers) - limit
        if over <= 0:
            return key, value, headers
        detail = detail[: max(0, len(detail) - over - 16)]
    raise DeadLetterError(
        f"a dead letter's origin and reason headers alone exceed {limit} bytes; raise the DLQ topic's "
        "max.message.bytes (kafka-configs --alter --entity-type topics --add-config max.message.bytes=1048588)"
    )


class DeadLetterWriter:
    """Writes dead letters to ``topic``; create lazily, call :meth:`flush` before declaring a window done.

    ``max_message_bytes`` is the DLQ topic's size limit; by default it is read from the topic's config
    before the first letter (the connection's own ``message.max.bytes``, if set, caps it).
    """

    def __init__(self, config: Mapping[str, Any], topic: str, *, max_message_bytes: int | None = None) -> None:
        if not topic:
            raise ValueError("dead-letter topic name is empty")
        if max_message_bytes is not None and max_message_bytes < MIN_LIMIT_BYTES:
            raise ValueError(f"max_message_bytes must be >= {MIN_LIMIT_BYTES}, got {max_message_bytes}")
        self._source_config = dict(config)
        self._config = producer_config(config, LETTER_PRODUCER_DEFAULTS)
        self.topic = topic
        self.limit = max_message_bytes
        self._producer: Any = None
        self._failures: list[str] = []
        self._oversized: list[tuple[DeadLetterDraft, int]] = []
        self.sent = 0
        self.too_large = 0

    def _topic_limit(self) -> int:
        from confluent_kafka import KafkaException

        try:
            value = describe_topic_config(admin_client(self._source_config), self.topic).get("max.message.bytes")
            limit = int(value) if value else FALLBACK_MAX_MESSAGE_BYTES
        except (KafkaException, ValueError) as exc:
            logger.warning(
                "could not read max.message.bytes of %s (%s); assuming %s bytes, letters the broker still refuses "
                "are re-sent smaller",
                self.topic,
                exc,
                FALLBACK_MAX_MESSAGE_BYTES,
            )
            limit = FALLBACK_MAX_MESSAGE_BYTES
        configured = self._config.get("message.max.bytes")
        return min(limit, int(configured)) if configured else limit

    def _client(self) -> Any:
        if self._producer is None:
            from confluent_kafka import Producer

            if self.limit is None:
                self.limit = max(MIN_LIMIT_BYTES, self._topic_limit())
            # A batch of several letters must fit the topic's limit too, and the client must accept one that large.
            config = {
                **self._config,
                "message.max.bytes": self.limit + CLIENT_FRAMING_SLACK,
                "batch.size": self.limit,
            }
            self._producer = Producer(config)
        return self._producer

    def _on_delivery(self, letter: DeadLetterDraft, limit: int, err: Any, msg: Any) -> None:
        from confluent_kafka import KafkaError

        if err is None:
            return
        if err.code() == KafkaError.MSG_SIZE_TOO_LARGE and limit > MIN_LIMIT_BYTES:
            self._oversized.append((letter, limit))
        else:
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
        """Queue one dead letter (original bytes plus origin and reason headers; a ``too_large`` excerpt if need be)."""
        producer = self._client()
        assert self.limit is not None
        self._produce(
            producer,
            DeadLetterDraft(key, value, origin_topic, origin_partition, origin_offset, reason, detail, 0),
            self.limit,
        )
        self.sent += 1

    def _produce(self, producer: Any, letter: DeadLetterDraft, limit: int) -> None:
        from confluent_kafka import KafkaError, KafkaException

        while True:  # ends: the limit halves down to MIN_LIMIT_BYTES, then a refusal is raised
            key, value, headers = fit_letter(letter, limit)
            try:
                produce_bounded(producer, self.topic, value, key, headers, partial(self._on_delivery, letter, limit))
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE or limit <= MIN_LIMIT_BYTES:
                    raise
                limit = max(MIN_LIMIT_BYTES, limit // 2)  # the client refused it locally: cut it further
                continue
            if any(name == "error.original_size" for name, _ in headers):
                self.too_large += 1
            producer.poll(0)
            return

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Wait until every dead letter is acknowledged; raise :class:`DeadLetterError` otherwise."""
        if self._producer is None:
            return
        for _ in range(MAX_SHRINKS + 1):
            remaining = self._producer.flush(timeout_s)
            if remaining:
                raise DeadLetterError(f"{remaining} dead letter(s) to {self.topic!r} not delivered within {timeout_s}s")
            if not self._oversized:
                break
            refused, self._oversized = self._oversized, []
            logger.warning(
                "%s dead letter(s) refused by %s as too large; re-sending them cut to %s bytes",
                len(refused),
                self.topic,
                refused[0][1] // 2,
            )
            for letter, limit in refused:
                self._produce(self._producer, letter, max(MIN_LIMIT_BYTES, limit // 2))
        if self._oversized:
            self._failures.append(f"still too large for {self.topic!r} after {MAX_SHRINKS} cuts")
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
        original_size=size if (size := as_int(_header(headers, "error.original_size"))) >= 0 else None,
        original_reason=_header(headers, "error.original_reason"),
    )


def read_dead_letters(consumer: Any, topic: str) -> Iterator[DeadLetter]:
    """Every dead letter currently in ``topic`` (low → high watermark of each partition)."""
    ranges = []
    for p in topic_partitions(consumer, topic):
        low, high = watermarks(consumer, topic, p)
        ranges.append(PartitionRange(topic, p, low, high))
    for batch in read_ranges(consumer, ranges):
        for msg in batch:
            yield to_dead_letter(msg)


def origins_since(consumer: Any, dlq_topic: str, since_ms: int) -> set[tuple[str, int, int]]:
    """Origins ``(topic, partition, offset)`` of the dead letters written to ``dlq_topic`` since ``since_ms``."""
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
    return dead_lettered_by_topic(consumer, dlq_topic).get(origin_topic, {})


def dead_lettered_by_topic(consumer: Any, dlq_topic: str) -> dict[str, dict[int, set[int]]]:
    """Per origin topic and partition, the offsets in the DLQ: one read of the DLQ for every stream."""
    out: dict[str, dict[int, set[int]]] = {}
    for letter in read_dead_letters(consumer, dlq_topic):
        if letter.origin_offset >= 0:
            out.setdefault(letter.origin_topic, {}).setdefault(letter.origin_partition, set()).add(letter.origin_offset)
    return out


def list_dead_letters(
    config: Mapping[str, Any], dlq_topic: str, *, reason: str | None = None, limit: int = 50
) -> dict[str, Any]:
    """Count dead letters by reason and show up to ``limit`` of them (newest origin wins per duplicate)."""
    with clients.consumer(config, "quoteflow-dlq-list") as reader:
        letters = {
            (d.origin_topic, d.origin_partition, d.origin_offset): d
            for d in read_dead_letters(reader, dlq_topic)
            if reason is None or d.reason == reason
        }
    by_reason: dict[str, int] = {}
    for letter in letters.values():
        by_reason[letter.reason] = by_reason.get(letter.reason, 0) + 1
    shown = [d.summary() for d in list(letters.values())[: max(0, limit)]]
    return {"dead_letters": len(letters), "by_reason": by_reason, "shown": shown}


def _committed(consumer: Any, topic: str, parts: Sequence[int]) -> dict[int, int]:
    from confluent_kafka import TopicPartition

    found = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=REPLAY_TIMEOUT_S)
    return {tp.partition: tp.offset for tp in found}


def replay_group(group_id: str, reason: str | None) -> str:
    """The consumer group that remembers how far ``replay --reason`` got (the plain group for a full replay)."""
    return group_id if reason is None else f"{group_id}.{reason}"


def replay_dead_letters(
    config: Mapping[str, Any],
    dlq_topic: str,
    target_topic: str,
    *,
    reason: str | None = None,
    group_id: str = "quoteflow-dlq-replay",
    routes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Re-produce dead letters not replayed before into ``target_topic``; with ``reason``, only those.

    ``routes`` maps an origin topic to its own target (the DLQ is shared: a bar's letter goes back to
    the bars topic, not into the quotes); letters of any other origin go to ``target_topic``.

    What was replayed is remembered as committed DLQ offsets: a full replay under ``group_id``, a
    replay of one reason under ``<group_id>.<reason>``, so replaying one reason leaves the others
    pending, and a letter covered by either is never replayed twice. Each origin is replayed once
    even if it was dead-lettered several times (window re-runs); offsets are committed only after
    every replayed record was acknowledged. ``too_large`` letters hold an excerpt, not the record:
    they are counted as ``unreplayable``.
    """
    from confluent_kafka import Producer, TopicPartition

    failures: list[str] = []
    replayed = skipped = 0
    unreplayable: list[str] = []
    with ExitStack() as stack:
        reader = stack.enter_context(clients.consumer(config, group_id))
        pointers: dict[str, Any] = {}  # reason → a consumer of that reason's group (for its committed offsets)
        done: dict[str, dict[int, int]] = {}
        parts = topic_partitions(reader, dlq_topic)

        def done_for(name: str) -> dict[int, int]:
            if name not in done:
                pointers[name] = stack.enter_context(clients.consumer(config, replay_group(group_id, name)))
                done[name] = _committed(pointers[name], dlq_topic, parts)
            return done[name]

        replayed_all = _committed(reader, dlq_topic, parts)
        ranges = []
        for p in parts:
            low, high = watermarks(reader, dlq_topic, p)
            start = max(low, replayed_all.get(p, -1), done_for(reason).get(p, -1) if reason is not None else -1)
            ranges.append(PartitionRange(dlq_topic, p, start, high))
        seen: set[tuple[str, int, int]] = set()
        # A letter is as large as its record was: let the client pass it, the quotes topic took it once.
        producer = Producer(
            {**producer_config(config, LETTER_PRODUCER_DEFAULTS), "message.max.bytes": REPLAY_MAX_MESSAGE_BYTES}
        )

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        for batch in read_ranges(reader, ranges):
            for msg in batch:
                letter = to_dead_letter(msg)
                origin = (letter.origin_topic, letter.origin_partition, letter.origin_offset)
                if (
                    (reason is not None and letter.reason != reason)
                    or origin in seen
                    or msg.offset() < done_for(letter.reason).get(msg.partition(), -1)  # replayed by reason
                ):
                    skipped += 1
                    continue
                seen.add(origin)
                if letter.truncated:  # an excerpt: replaying it would only dead-letter it again
                    unreplayable.append("-".join(map(str, origin)))
                    continue
                headers: list[tuple[str, str | bytes | None]] = [("replay.origin", "-".join(map(str, origin)).encode())]
                target = (routes or {}).get(letter.origin_topic, target_topic)
                produce_bounded(producer, target, letter.value, letter.key, headers, on_delivery)
                producer.poll(0)
                replayed += 1
        if producer.flush(FLUSH_TIMEOUT_S) or failures:
            raise DeadLetterError(f"replay to {target_topic!r} not fully acknowledged: {failures[:1] or 'timeout'}")
        ends = [TopicPartition(dlq_topic, r.partition, r.end) for r in ranges if r.size > 0]
        if ends:
            (reader if reason is None else pointers[reason]).commit(offsets=ends, asynchronous=False)
    logger.info(
        "replayed %s dead letter(s)%s from %s into %s (%s skipped)",
        replayed,
        f" with reason {reason}" if reason is not None else "",
        dlq_topic,
        target_topic,
        skipped,
    )
    if unreplayable:
        logger.warning(
            "%s too_large dead letter(s) hold only an excerpt and were not replayed; re-index them from their "
            "origin with backfill once the cause is fixed: %s",
            len(unreplayable),
            ", ".join(unreplayable[:20]),
        )
    return {"replayed": replayed, "skipped": skipped, "unreplayable": len(unreplayable), "target": target_topic}
