"""The reader: a time window → per-partition ``[start, end)`` offsets, and reading exactly such a range.

Bounds come from ``offsets_for_times`` (the first offset whose LogAppendTime is at or after the
bound; the high watermark when there is none), so consecutive windows tile each partition with
no gap and no overlap. Reading uses ``assign()`` at explicit offsets — never ``subscribe()`` — so
a run joins no group rebalance and re-reads the same records every time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from quoteflow.settings import ConfigError

logger = logging.getLogger(__name__)

METADATA_TIMEOUT_S = 15.0
STALL_TIMEOUT_S = 30.0


class RangeReadError(RuntimeError):
    """Reading an offset range failed or stalled before its end was reached."""


class RangeUnavailable(ConfigError):
    """A requested range lies (partly) outside what Kafka still retains; the message gives the available range."""


@dataclass(frozen=True, order=True)
class PartitionRange:
    """Offsets ``[start, end)`` of one partition of ``topic``."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        """How many offsets the range spans."""
        return max(0, self.end - self.start)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for XCom and JSON summaries)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PartitionRange:
        """Inverse of :meth:`to_dict`."""
        return cls(str(data["topic"]), int(data["partition"]), int(data["start"]), int(data["end"]))


def topic_partitions(consumer: Any, topic: str, timeout_s: float = METADATA_TIMEOUT_S) -> list[int]:
    """Partition ids of ``topic``; :class:`ConfigError` if it does not exist."""
    meta = consumer.list_topics(topic=topic, timeout=timeout_s)
    info = meta.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise ConfigError(f"topic {topic!r} does not exist; run `quoteflow setup` (or quotes_setup)")
    return sorted(info.partitions)


def watermarks(consumer: Any, topic: str, partition: int, timeout_s: float = METADATA_TIMEOUT_S) -> tuple[int, int]:
    """``(low, high)`` watermarks of one partition."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    for attempt in range(4):
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
            return int(low), int(high)
        except KafkaException as exc:
            # The client's metadata cache may not know a partition it has not fetched yet: refresh, retry.
            if exc.args[0].code() != KafkaError._UNKNOWN_PARTITION or attempt == 3:
                raise
            consumer.list_topics(topic=topic, timeout=timeout_s)
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def offsets_at(
    consumer: Any, topic: str, partitions: Sequence[int], epoch_ms: int, timeout_s: float = METADATA_TIMEOUT_S
) -> dict[int, int]:
    """Per partition, the first offset with timestamp ≥ ``epoch_ms``; the high watermark where there is none."""
    from confluent_kafka import TopicPartition

    def lookup(parts: Sequence[int]) -> dict[int, int]:
        found = consumer.offsets_for_times([TopicPartition(topic, p, int(epoch_ms)) for p in parts], timeout=timeout_s)
        for tp in found:
            if tp.error is not None:
                raise RangeReadError(f"offsets_for_times failed for {topic}[{tp.partition}]: {tp.error}")
        return {tp.partition: int(tp.offset) for tp in found}

    out = lookup(partitions)
    # No record at or after the time: the bound is the log end. A record appended between the lookup
    # and reading the high watermark would be counted before the bound although its timestamp is past
    # it (and the next window would start before this one's end): so read the watermark first, then
    # ask again, and use the watermark only if there is still no record at or after the time.
    empty = [p for p, offset in out.items() if offset < 0]
    if empty:
        highs = {p: watermarks(consumer, topic, p, timeout_s)[1] for p in empty}
        for p, offset in lookup(empty).items():
            out[p] = offset if offset >= 0 else highs[p]
    return out


def timestamp_at(consumer: Any, topic: str, partition: int, offset: int, timeout_s: float = 5.0) -> int | None:
    """The timestamp (ms) of the record at ``offset``; ``None`` if it cannot be read within ``timeout_s``."""
    from confluent_kafka import TopicPartition

    consumer.assign([TopicPartition(topic, partition, offset)])
    try:
        for msg in consumer.consume(num_messages=1, timeout=timeout_s):
            if msg.error() is None:
                return int(msg.timestamp()[1])
    finally:
        consumer.unassign()
    return None


def warn_if_expired(consumer: Any, ranges: Sequence[PartitionRange], start_ms: int) -> list[int]:
    """Partitions where retention may already have deleted records of a window starting at ``start_ms``.

    A window that begins at a partition's low watermark, on a log that has lost its head, and whose
    first retained record is younger than the window start may have lost records: say so loudly.
    """
    suspect = []
    for r in ranges:
        if r.start == 0:
            continue
        low, high = watermarks(consumer, r.topic, r.partition)
        if r.start > low or low >= high:
            continue  # the window starts inside the retained log (or nothing is retained to compare with)
        first_ms = timestamp_at(consumer, r.topic, r.partition, low)
        if first_ms is not None and first_ms > start_ms:
            suspect.append(r.partition)
            logger.warning(
                "%s[%s]: the window starts before the oldest retained record (offset %s); records appended "
                "between the window start and then were deleted by retention and cannot be indexed",
                r.topic,
                r.partition,
                low,
            )
    return suspect


def window_ranges(
    consumer: Any, topic: str, start_ms: int, end_ms: int, partitions: Sequence[int] | None = None
) -> list[PartitionRange]:
    """The per-partition offset ranges holding exactly the records appended in ``[start_ms, end_ms)``."""
    if end_ms < start_ms:
        raise ConfigError(f"window end {end_ms} is before its start {start_ms}")
    parts = list(partitions) if partitions else topic_partitions(consumer, topic)
    starts = offsets_at(consumer, topic, parts, start_ms)
    ends = offsets_at(consumer, topic, parts, end_ms)
    ranges = [PartitionRange(topic, p, starts[p], max(starts[p], ends[p])) for p in parts]
    warn_if_expired(consumer, ranges, start_ms)
    return ranges


def group_ranges(ranges: Sequence[PartitionRange], groups: int) -> list[list[PartitionRange]]:
    """Split ranges into at most ``groups`` lists of similar total size (largest first, greedy), none empty."""
    if groups < 1:
        raise ConfigError(f"partition groups must be >= 1, got {groups}")
    buckets: list[list[PartitionRange]] = [[] for _ in range(min(groups, max(1, len(ranges))))]
    loads = [0] * len(buckets)
    for r in sorted(ranges, key=lambda r: (-r.size, r.partition)):
        i = loads.index(min(loads))
        buckets[i].append(r)
        loads[i] += r.size
    return [sorted(b) for b in buckets if b] or [[]]


def read_ranges(
    consumer: Any,
    ranges: Iterable[PartitionRange],
    *,
    batch_size: int = 5000,
    poll_timeout_s: float = 1.0,
    stall_timeout_s: float = STALL_TIMEOUT_S,
) -> Generator[list[Any], None, None]:
    """Yield batches of messages holding exactly the offsets of ``ranges`` (assigned, never subscribed).

    Several ranges of one partition are read one after another (an assignment holds a partition once).
    Raises :class:`RangeReadError` on a consumer error or when no progress is made for ``stall_timeout_s``.
    """
    rounds: list[list[PartitionRange]] = []
    for r in sorted(r for r in ranges if r.size > 0):
        for round_ in rounds:
            if all((x.topic, x.partition) != (r.topic, r.partition) for x in round_):
                round_.append(r)
                break
        else:
            rounds.append([r])
    for round_ in rounds:
        yield from _read_round(consumer, round_, batch_size, poll_timeout_s, stall_timeout_s)


def _read_round(
    consumer: Any, ranges: list[PartitionRange], batch_size: int, poll_timeout_s: float, stall_timeout_s: float
) -> Iterator[list[Any]]:
    from confluent_kafka import TopicPartition

    pending = {(r.topic, r.partition): r.end for r in ranges if r.size > 0}
    starts = [TopicPartition(r.topic, r.partition, r.start) for r in ranges if r.size > 0]
    if not pending:
        return
    consumer.assign(starts)
    consumer.resume(starts)  # a partition paused at the end of an earlier round stays paused otherwise
    last_progress = time.monotonic()
    try:
        while pending:
            messages = consumer.consume(num_messages=batch_size, timeout=poll_timeout_s)
            batch = []
            for msg in messages:
                err = msg.error()
                if err is not None:
                    raise RangeReadError(f"consuming {msg.topic()}[{msg.partition()}]: {err}")
                key = (msg.topic(), msg.partition())
                end = pending.get(key)
                if end is None or msg.offset() >= end:
                    continue  # past this range's end (the rest of the fetch): not ours
                batch.append(msg)
                if msg.offset() >= end - 1:
                    del pending[key]
                    consumer.pause([TopicPartition(key[0], key[1])])  # stop fetching past the end
            if batch:
                last_progress = time.monotonic()
                yield batch
            elif pending:
                _drop_finished(consumer, pending)
                if pending and time.monotonic() - last_progress > stall_timeout_s:
                    raise RangeReadError(
                        f"no progress for {stall_timeout_s:.0f}s reading {sorted(pending)}; "
                        "is the broker up and the range still retained?"
                    )
    finally:
        try:
            consumer.unassign()
        except RuntimeError as exc:
            # The caller closed the consumer before this generator was finalised: nothing is left to release.
            logger.debug("unassign skipped: %s", exc)


def _drop_finished(consumer: Any, pending: dict[tuple[str, int], int]) -> None:
    """Forget partitions whose position already reached the end (offset gaps, e.g. transaction markers)."""
    from confluent_kafka import TopicPartition

    positions = consumer.position([TopicPartition(t, p) for t, p in pending])
    for tp in positions:
        key = (tp.topic, tp.partition)
        if tp.offset >= 0 and tp.offset >= pending.get(key, 1 << 62):
            del pending[key]


def check_retained(consumer: Any, ranges: Iterable[PartitionRange]) -> None:
    """Raise :class:`RangeUnavailable` if any range reaches outside ``[low, high)`` of its partition."""
    for r in ranges:
        if r.size == 0:
            continue
        low, high = watermarks(consumer, r.topic, r.partition)
        if r.start < low or r.end > high:
            raise RangeUnavailable(
                f"{r.topic}[{r.partition}] offsets [{r.start}, {r.end}) are not all retained; "
                f"Kafka holds [{low}, {high}) for this partition"
            )


def commit_if_ahead(consumer: Any, ranges: Iterable[PartitionRange]) -> dict[int, int]:
    """Commit each range's end as the group's offset where it moves the committed offset forward; return commits."""
    from confluent_kafka import TopicPartition

    wanted = {(r.topic, r.partition): r.end for r in ranges}
    if not wanted:
        return {}
    current = consumer.committed([TopicPartition(t, p) for t, p in wanted], timeout=METADATA_TIMEOUT_S)
    ahead = [
        TopicPartition(tp.topic, tp.partition, wanted[(tp.topic, tp.partition)])
        for tp in current
        if wanted[(tp.topic, tp.partition)] > tp.offset
    ]
    if ahead:
        consumer.commit(offsets=ahead, asynchronous=False)
    return {tp.partition: tp.offset for tp in ahead}
