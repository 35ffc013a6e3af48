"""Index one time window of the quotes, bars and gaps topics into Elasticsearch: each record once, or dead-lettered.

A window ``[start, end)`` becomes per-partition offset ranges of every stream's topic
(:func:`plan_window`); each range is read exactly with ``assign()`` and indexed by its stream's
rules (:func:`index_ranges`): quotes with ``_id = <topic>-<partition>-<offset>``, bars with
``_id = <symbol>-<resolution>-<start>`` versioned by offset (a 409 from an older offset is *stale*:
done, counted), gaps with ``_id = gap_id``. Invalid records and per-item mapping rejections go to
the DLQ with their origin and reason. The group's offsets are committed only after the whole window
succeeded, and only forward — they exist for lag tools; correctness never depends on them.

The names a run works on arrive as one :class:`~quoteflow.streams.Names` value.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from quoteflow.elastic.bulk import BulkItem, BulkWriter, RetryPolicy
from quoteflow.elastic.documents import bar_lines, bulk_lines, gap_lines
from quoteflow.kafka import clients
from quoteflow.kafka.admin import check_topics
from quoteflow.kafka.dlq import DeadLetterDraft, DeadLetterWriter, origins_since
from quoteflow.kafka.reader import (
    PartitionRange,
    commit_if_ahead,
    group_ranges,
    read_ranges,
    watermarks,
    window_ranges,
)
from quoteflow.quotes import InvalidQuote
from quoteflow.settings import ConfigError
from quoteflow.streams import Kind, Names

logger = logging.getLogger(__name__)

FUTURE_GRACE_S = 1.0
# A record the broker stamped just before a window's end may not be readable yet (in flight, or not
# yet replicated to the high watermark). Planning a window waits until its end is this far in the past,
# so such a record is not left between this window's end offset and the next window's start offset.
SETTLE_S = 3.0
DLQ_CLOCK_MARGIN_MS = 60_000
# While the main thread builds documents (CPU-bound), the bulk sender threads need the GIL for short
# moments to push bytes and read replies; at the default 5 ms switch interval each of those waits up
# to 5 ms, which measurably idles Elasticsearch. 1 ms keeps requests flowing (+15-25 % docs/s here).
GIL_SWITCH_INTERVAL_S = 0.001

# A record → its bulk lines: (value, topic, partition, offset, kafka timestamp ms, index prefix) → bytes.
LineBuilder = Callable[[bytes | None, str, int, int, int, str], bytes]
BUILDERS: dict[Kind, LineBuilder] = {Kind.QUOTES: bulk_lines, Kind.BARS: bar_lines, Kind.GAPS: gap_lines}


@contextmanager
def _responsive_gil() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, GIL_SWITCH_INTERVAL_S))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@dataclass
class IndexSummary:
    """What one run did: records read, indexed, stale, dead-lettered (``too_large`` of them cut), retries, time, lag.

    ``stale`` counts versioned writes (bars) older than the document in place: done, not errors.
    ``topics`` breaks ``read``/``indexed``/``stale``/``dead_lettered`` down per topic.
    """

    read: int = 0
    indexed: int = 0
    dead_lettered: int = 0
    too_large: int = 0
    retries: int = 0
    bulk_requests: int = 0
    elapsed_s: float = 0.0
    lag_records: int = 0
    lag_seconds: float = 0.0
    stale: int = 0
    committed: dict[int, int] = field(default_factory=dict)
    ranges: list[dict[str, Any]] = field(default_factory=list)
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    topics: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (XCom, JSON summary)."""
        out = asdict(self)
        out["committed"] = {str(k): v for k, v in self.committed.items()}
        return out

    @classmethod
    def merge(cls, parts: Iterable[Mapping[str, Any]]) -> IndexSummary:
        """Add up the summaries of a window's partition groups."""
        total = cls()
        for part in parts:
            total.read += int(part["read"])
            total.indexed += int(part["indexed"])
            total.stale += int(part.get("stale", 0))
            total.dead_lettered += int(part["dead_lettered"])
            total.too_large += int(part.get("too_large", 0))
            total.retries += int(part["retries"])
            total.bulk_requests += int(part.get("bulk_requests", 0))
            total.elapsed_s = max(total.elapsed_s, float(part["elapsed_s"]))
            lag = int(part["lag_records"])
            total.lag_records = -1 if lag < 0 or total.lag_records < 0 else total.lag_records + lag
            total.ranges.extend(part["ranges"])
            for reason, n in dict(part.get("dead_letter_reasons") or {}).items():
                total.dead_letter_reasons[reason] = total.dead_letter_reasons.get(reason, 0) + int(n)
            for topic, counts in dict(part.get("topics") or {}).items():
                mine = total.topics.setdefault(topic, dict.fromkeys(TOPIC_COUNTS, 0))
                for name in TOPIC_COUNTS:
                    mine[name] += int(counts.get(name, 0))
        return total

    def topics_text(self) -> str:
        """``topic read/indexed/stale/dead`` per topic, for the one log line."""
        return " ".join(
            f"{topic}={c['read']}/{c['indexed']}/{c['stale']}/{c['dead_lettered']}"
            for topic, c in sorted(self.topics.items())
        )


TOPIC_COUNTS = ("read", "indexed", "stale", "dead_lettered")


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime (a window bound); :class:`ConfigError` if naive."""
    if moment.tzinfo is None:
        raise ConfigError(f"window bound {moment!r} has no timezone; pass an aware datetime (UTC)")
    return int(moment.timestamp() * 1000)


def parse_bound(text: str) -> datetime:
    """An ISO-8601 datetime from the command line or a Param; naive means UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{text!r} is not an ISO-8601 datetime such as 2026-11-28T03:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def plan_window(
    kafka_config: Mapping[str, Any],
    start: datetime,
    end: datetime,
    names: Names | None = None,
    *,
    groups: int = 1,
    now: datetime | None = None,
    settle_s: float = SETTLE_S,
    **legacy: str,
) -> list[list[dict[str, Any]]]:
    """Window bounds → per-partition offset ranges of every stream's topic, split into at most ``groups`` lists.

    The quotes topic must exist; a bars or gaps topic that does not is skipped with a warning (the
    quotes keep flowing until setup creates it). Any topic without LogAppendTime is refused.
    (``legacy``: the older ``topic``/``group_id`` keywords, for callers not moved to ``names``.)
    """
    names = Names.resolve(names, legacy)
    start_ms, end_ms = epoch_ms(start), epoch_ms(end)
    current = now or datetime.now(UTC)
    if end_ms > (current.timestamp() + FUTURE_GRACE_S) * 1000:
        raise ConfigError(f"window end {end.isoformat()} is in the future; records may still arrive in it")
    wait = end_ms / 1000 + settle_s - time.time()
    if wait > 0:
        time.sleep(wait)
    topics = check_topics(kafka_config, {s.topic: s.required for s in names.streams})
    ranges: list[PartitionRange] = []
    with clients.consumer(kafka_config, names.group_id) as consumer:
        for topic in topics:
            ranges.extend(window_ranges(consumer, topic, start_ms, end_ms))
    return [[r.to_dict() for r in group] for group in group_ranges(ranges, groups)]


class _Route:
    """Where one topic's records go: the line builder, the index prefix, and the records read (a counter)."""

    __slots__ = ("build", "prefix", "read")

    def __init__(self, build: LineBuilder, prefix: str) -> None:
        self.build = build
        self.prefix = prefix
        self.read = 0


def _routes(names: Names, parts: Sequence[PartitionRange]) -> dict[str, _Route]:
    """The route of each topic among ``parts`` (:class:`ConfigError` for a topic none of the streams has)."""
    routes = {}
    for topic in sorted({r.topic for r in parts}):
        stream = names.stream(topic)
        routes[topic] = _Route(BUILDERS[stream.kind], stream.index_prefix)
    return routes


def _index_messages(
    batches: Iterable[list[Any]],
    writer: BulkWriter,
    letters: list[DeadLetterDraft],
    summary: IndexSummary,
    routes: Mapping[str, _Route],
) -> None:
    """The hot loop: each record becomes bulk lines for ``writer`` or a dead letter (no per-record logging)."""
    for batch in batches:
        route: _Route | None = None
        build: LineBuilder = bulk_lines
        prefix, last_topic, run = "", None, 0
        for msg in batch:
            topic, partition, offset, value = msg.topic(), msg.partition(), msg.offset(), msg.value()
            if topic != last_topic:  # batches hold runs of one topic: one lookup per run, not per record
                if route is not None:
                    route.read += run
                route, run, last_topic = routes[topic], 0, topic
                build, prefix = route.build, route.prefix
            run += 1
            timestamp_ms = msg.timestamp()[1]
            try:
                lines = build(value, topic, partition, offset, timestamp_ms, prefix)
            except InvalidQuote as exc:  # InvalidBar and InvalidGap are InvalidQuotes: the same DLQ rules
                letters.append(
                    DeadLetterDraft(msg.key(), value, topic, partition, offset, exc.reason, exc.detail, timestamp_ms)
                )
                continue
            writer.add(BulkItem(lines, topic, partition, offset, msg.key(), value, timestamp_ms))
        if route is not None:
            route.read += run
        summary.read += len(batch)


def _send_dead_letters(consumer: Any, dlq: DeadLetterWriter, letters: list[DeadLetterDraft]) -> int:
    """Write the window's dead letters, skipping those an earlier run of it already wrote; return how many sent.

    Dead letters of a window are written after its records were appended, so only the DLQ's tail
    since the oldest of them (less a clock margin) can hold earlier copies: re-runs stay exact there too.
    """
    if not letters:
        return 0
    since_ms = min(letter.timestamp_ms for letter in letters) - DLQ_CLOCK_MARGIN_MS
    present = origins_since(consumer, dlq.topic, since_ms)
    sent = 0
    for letter in letters:
        if (letter.topic, letter.partition, letter.offset) in present:
            continue
        dlq.send(
            key=letter.key,
            value=letter.value,
            origin_topic=letter.topic,
            origin_partition=letter.partition,
            origin_offset=letter.offset,
            reason=letter.reason,
            detail=letter.detail,
        )
        sent += 1
    dlq.flush()
    return sent


def _topic_counts(
    routes: Mapping[str, _Route], letters: Sequence[DeadLetterDraft], stale: Mapping[str, int]
) -> dict[str, dict[str, int]]:
    dead: dict[str, int] = {}
    for letter in letters:
        dead[letter.topic] = dead.get(letter.topic, 0) + 1
    out = {}
    for topic, route in routes.items():
        d, st = dead.get(topic, 0), stale.get(topic, 0)
        out[topic] = {"read": route.read, "indexed": route.read - d - st, "stale": st, "dead_lettered": d}
    return out


def index_ranges(
    kafka_config: Mapping[str, Any],
    es: Any,
    ranges: Sequence[PartitionRange | Mapping[str, Any]],
    names: Names | None = None,
    *,
    commit: bool = False,
    retry: RetryPolicy | None = None,
    chunk_docs: int = 2000,
    chunk_bytes: int = 5 * 1024 * 1024,
    in_flight: int = 2,
    label: str | None = None,
    group_id: str | None = None,
    **legacy: str,
) -> IndexSummary:
    """Read exactly ``ranges`` and index every record by its stream's rules (or dead-letter it); commit if ``commit``.

    ``group_id`` overrides the names' group (backfill and repair read under their own, never committing).
    (``legacy``: the older ``dlq_topic``/``index_prefix`` keywords, for callers not moved to ``names``.)
    """
    parts = [r if isinstance(r, PartitionRange) else PartitionRange.from_dict(r) for r in ranges]
    if names is None and "topic" not in legacy and parts:
        legacy = {"topic": parts[0].topic, **legacy}
    if group_id is not None and names is None:
        legacy = {**legacy, "group_id": group_id}
    names = Names.resolve(names, legacy)
    group = group_id or names.group_id
    routes = _routes(names, parts)
    label = label or f"partitions {[(r.topic, r.partition) if len(routes) > 1 else r.partition for r in parts]}"
    started = time.monotonic()
    summary = IndexSummary(ranges=[r.to_dict() for r in parts])
    if not any(r.size for r in parts):
        # Nothing to read here, yet records may have arrived after these ranges: the lag figure still counts them.
        with clients.consumer(kafka_config, group) as consumer:
            summary.lag_records = _lag(consumer, parts)
        summary.topics = _topic_counts(routes, [], {})
        logger.info(
            "%s: read=0 indexed=0 dead_lettered=0 retries=0 elapsed=0.00s lag=%s records (empty)",
            label,
            summary.lag_records,
        )
        return summary
    dlq = DeadLetterWriter(kafka_config, names.dlq_topic)
    letters: list[DeadLetterDraft] = []
    bulk = BulkWriter(es, chunk_docs=chunk_docs, chunk_bytes=chunk_bytes, in_flight=in_flight, retry=retry)
    with closing(bulk) as writer, clients.consumer(kafka_config, group) as consumer:
        # closing(): the reader's own clean-up must run now, while the consumer is still open.
        with _responsive_gil(), closing(read_ranges(consumer, parts)) as batches:
            _index_messages(batches, writer, letters, summary, routes)
        stats = writer.flush()
        for rejection in stats.rejections:
            item = rejection.item
            letters.append(
                DeadLetterDraft(
                    item.key, item.value, item.topic, item.partition, item.offset,
                    rejection.reason, rejection.detail, item.timestamp_ms,
                )
            )  # fmt: skip
        written = _send_dead_letters(consumer, dlq, letters)
        if written != len(letters):
            logger.info(
                "%s: %s of %s dead letters were already in the DLQ", label, len(letters) - written, len(letters)
            )
        reasons: dict[str, int] = {}
        for letter in letters:
            reasons[letter.reason] = reasons.get(letter.reason, 0) + 1
        summary.indexed = stats.indexed
        summary.stale = sum(stats.stale.values())
        summary.retries = stats.retries
        summary.bulk_requests = stats.requests
        summary.dead_lettered = len(letters)
        summary.too_large = dlq.too_large
        summary.dead_letter_reasons = reasons
        summary.topics = _topic_counts(routes, letters, stats.stale)
        if summary.indexed + summary.stale + summary.dead_lettered != summary.read:
            raise RuntimeError(
                f"accounting error: read {summary.read} but indexed {summary.indexed} + stale {summary.stale} + "
                f"dead-lettered {summary.dead_lettered}; not committing"
            )
        if commit:
            summary.committed = commit_if_ahead(consumer, parts)
        summary.lag_records = _lag(consumer, parts)
    summary.elapsed_s = round(time.monotonic() - started, 3)
    expected = sum(r.size for r in parts)
    if summary.read != expected:
        logger.warning(
            "%s: read %s records where the ranges span %s offsets (gaps in the log)", label, summary.read, expected
        )
    logger.info(
        "%s: read=%s indexed=%s stale=%s dead_lettered=%s retries=%s elapsed=%.2fs lag=%s records%s%s",
        label,
        summary.read,
        summary.indexed,
        summary.stale,
        summary.dead_lettered,
        summary.retries,
        summary.elapsed_s,
        summary.lag_records,
        f" committed={summary.committed}" if commit else "",
        f" by topic (read/indexed/stale/dead) {summary.topics_text()}" if len(routes) > 1 else "",
    )
    return summary


def _lag(consumer: Any, parts: Sequence[PartitionRange]) -> int:
    """Records appended after the ranges' ends; -1 if unknown (lag is reporting only, never a failure)."""
    from confluent_kafka import KafkaException

    try:
        return sum(max(0, watermarks(consumer, r.topic, r.partition)[1] - r.end) for r in parts)
    except KafkaException as exc:
        logger.warning("could not read watermarks for the lag figure: %s", exc)
        return -1


def commit_window(
    kafka_config: Mapping[str, Any], ranges: Sequence[Mapping[str, Any]], *, group_id: str
) -> dict[int, int]:
    """Move the group's committed offsets forward to the window's ends (for lag tools only)."""
    with clients.consumer(kafka_config, group_id) as consumer:
        return commit_if_ahead(consumer, [PartitionRange.from_dict(r) for r in ranges])


def index_window(
    kafka_config: Mapping[str, Any],
    es: Any,
    start: datetime,
    end: datetime,
    names: Names | None = None,
    *,
    retry: RetryPolicy | None = None,
    commit: bool = True,
    now: datetime | None = None,
    groups: int = 1,
    **legacy: str,
) -> IndexSummary:
    """Index every record appended to the streams' topics in ``[start, end)``: the DAG's three steps, in turn.

    :func:`plan_window` → :func:`index_ranges` for each partition group → :func:`finish_window`.
    """
    names = Names.resolve(names, legacy)
    planned = plan_window(kafka_config, start, end, names, groups=groups, now=now)
    parts = [index_ranges(kafka_config, es, group, names, retry=retry).to_dict() for group in planned]
    return finish_window(kafka_config, parts, start, end, names, commit=commit)


def finish_window(
    kafka_config: Mapping[str, Any],
    summaries: Iterable[Mapping[str, Any]],
    start: datetime,
    end: datetime,
    names: Names | None = None,
    *,
    commit: bool = True,
    **legacy: str,
) -> IndexSummary:
    """After every partition group succeeded: commit the window's ends (unless not ``commit``), log its one line."""
    names = Names.resolve(names, legacy)
    total = IndexSummary.merge(summaries)
    if commit:
        total.committed = commit_window(kafka_config, total.ranges, group_id=names.group_id)
    total.lag_seconds = round(max(0.0, (datetime.now(UTC) - end).total_seconds()), 1)
    logger.info(
        "window [%s, %s) of %s: read=%s indexed=%s stale=%s dead_lettered=%s retries=%s elapsed=%.2fs "
        "lag=%s records, %.0fs behind; committed=%s%s",
        start.isoformat(),
        end.isoformat(),
        ", ".join(names.topics),
        total.read,
        total.indexed,
        total.stale,
        total.dead_lettered,
        total.retries,
        total.elapsed_s,
        total.lag_records,
        total.lag_seconds,
        total.committed,
        f"; by topic (read/indexed/stale/dead) {total.topics_text()}" if len(total.topics) > 1 else "",
    )
    return total
