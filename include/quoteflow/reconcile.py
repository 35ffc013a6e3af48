"""Reconcile: compare what Kafka holds with what Elasticsearch holds, per stream and partition; list or repair holes.

For each partition, Kafka's side is ``[low watermark, committed offset)`` — the committed offset is
the end of the last window that completed (or the high watermark, on request).

Quotes (one document per offset): Elasticsearch's side is counted with a ``histogram`` aggregation
on ``kafka.offset`` (never a document scan): buckets that hold fewer documents than offsets (minus
the offsets that went to the DLQ) are refined with finer histograms until the missing offsets are exact.

Bars and gaps (one document per bar or gap, rewritten by later records): counting offsets cannot
work, so the retained records are read, each document id's newest offset kept, and one ``mget``
per thousand ids checks that the document is there with at least that offset. A hole is the newest
record of a missing or stale document (or an invalid record that never reached the DLQ).

Repair re-indexes the holes with the backfill path, which is idempotent, then checks again. With a
bars stream, :mod:`quoteflow.crosscheck` also checks the ticks against the closed bars.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from quoteflow.backfill import backfill_group
from quoteflow.elastic.bulk import RetryPolicy
from quoteflow.elastic.documents import bar_document_id, month_index_name
from quoteflow.indexer import index_ranges
from quoteflow.kafka import clients
from quoteflow.kafka.dlq import dead_lettered_by_topic
from quoteflow.kafka.reader import PartitionRange, offsets_at, read_ranges, topic_partitions, watermarks
from quoteflow.quotes import InvalidQuote
from quoteflow.settings import ConfigError
from quoteflow.streams import Kind, Names, Stream

logger = logging.getLogger(__name__)

MAX_BUCKETS = 5000
MAX_QUERIES = 500
MGET_CHUNK = 1000
UNTIL = ("committed", "high")


@dataclass
class PartitionReport:
    """One partition's comparison: the range checked, what should and does exist, and the holes."""

    partition: int
    low: int
    upper: int
    expected: int = 0
    indexed: int = 0
    dead_lettered: int = 0
    holes: list[list[int]] = field(default_factory=list)

    @property
    def missing(self) -> int:
        """Offsets missing from Elasticsearch (and not in the DLQ)."""
        return sum(b - a for a, b in self.holes)


def _count_between(sorted_offsets: Sequence[int], start: int, end: int) -> int:
    return bisect.bisect_left(sorted_offsets, end) - bisect.bisect_left(sorted_offsets, start)


def offset_histogram(
    es: Any, index_pattern: str, topic: str, partition: int, start: int, end: int, interval: int
) -> dict[int, int]:
    """Document counts of ``topic``/``partition`` per ``interval``-wide offset bucket of ``[start, end)``."""
    response = es.search(
        index=index_pattern,
        size=0,
        track_total_hits=False,
        query={
            "bool": {
                "filter": [
                    {"term": {"kafka.topic": topic}},
                    {"term": {"kafka.partition": partition}},
                    {"range": {"kafka.offset": {"gte": start, "lt": end}}},
                ]
            }
        },
        aggs={
            "offsets": {
                "histogram": {
                    "field": "kafka.offset",
                    "interval": interval,
                    "offset": start % interval,
                    "min_doc_count": 1,
                }
            }
        },
        ignore_unavailable=True,
        allow_no_indices=True,
    )
    buckets = response["aggregations"]["offsets"]["buckets"] if "aggregations" in response else []
    return {int(b["key"]): int(b["doc_count"]) for b in buckets}


def find_holes(
    es: Any,
    index_pattern: str,
    topic: str,
    partition: int,
    start: int,
    end: int,
    dead: Sequence[int] = (),
    max_queries: int = MAX_QUERIES,
    max_buckets: int = MAX_BUCKETS,
) -> tuple[list[list[int]], int]:
    """Missing offset ranges ``[a, b)`` of ``[start, end)`` (DLQ'd offsets excluded) and the indexed count."""
    dead_sorted = sorted(dead)
    missing: list[int] = []  # flat list of [a, b) pairs, merged at the end
    coarse: list[tuple[int, int]] = []
    indexed = 0
    queries = 0
    todo = [(start, end)] if end > start else []
    top = True
    while todo:
        a, b = todo.pop()
        if queries >= max_queries:
            coarse.append((a, b))  # out of query budget: repair the whole bucket (idempotent anyway)
            continue
        interval = max(1, math.ceil((b - a) / max_buckets))
        counts = offset_histogram(es, index_pattern, topic, partition, a, b, interval)
        queries += 1
        for lo in range(a, b, interval):
            hi = min(b, lo + interval)
            have = counts.get(lo, 0)
            if top:
                indexed += have
            want = (hi - lo) - _count_between(dead_sorted, lo, hi)
            if have >= want:
                continue
            if have == 0 or interval == 1:
                missing.extend(_minus(lo, hi, dead_sorted))
            else:
                todo.append((lo, hi))
        top = False
    holes = _merge(missing + [x for a, b in coarse for x in _minus(a, b, dead_sorted)])
    return holes, indexed


def _minus(start: int, end: int, dead_sorted: Sequence[int]) -> list[int]:
    """``[start, end)`` minus the dead-lettered offsets, as a flat list of range bounds."""
    out: list[int] = []
    cursor = start
    for offset in dead_sorted[bisect.bisect_left(dead_sorted, start) : bisect.bisect_left(dead_sorted, end)]:
        if offset > cursor:
            out.extend((cursor, offset))
        cursor = offset + 1
    if cursor < end:
        out.extend((cursor, end))
    return out


def _merge(flat: list[int]) -> list[list[int]]:
    pairs = sorted(zip(flat[0::2], flat[1::2], strict=True))
    merged: list[list[int]] = []
    for a, b in pairs:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def _bounds(
    consumer: Any, stream: Stream, until: str, partitions: Sequence[int] | None, since_ms: int | None = None
) -> dict[int, tuple[int, int]]:
    """Per partition of ``stream``'s topic, ``(low, upper)``: the offsets reconcile checks (from ``since_ms``)."""
    from confluent_kafka import TopicPartition

    topic = stream.topic
    parts = list(partitions) if partitions else topic_partitions(consumer, topic)
    committed = {
        tp.partition: tp.offset for tp in consumer.committed([TopicPartition(topic, p) for p in parts], timeout=15.0)
    }
    firsts = offsets_at(consumer, topic, parts, since_ms) if since_ms is not None else {}
    bounds = {}
    for p in parts:
        low, high = watermarks(consumer, topic, p)
        upper = high if until == "high" else min(high, max(low, committed.get(p, -1)))
        bounds[p] = (min(upper, max(low, firsts.get(p, low))), upper)
    return bounds


def compare(
    kafka_config: Mapping[str, Any],
    es: Any,
    names: Names | None = None,
    *,
    until: str = "committed",
    partitions: Sequence[int] | None = None,
    stream: Kind | str = Kind.QUOTES,
    recent_hours: float = 0.0,
    **legacy: str,
) -> list[PartitionReport]:
    """Per partition of ``stream``, what Kafka holds versus what Elasticsearch (plus the DLQ) holds, with the holes.

    For bars and gaps, ``recent_hours`` > 0 reads only the records appended in that many past hours
    (each run re-reads them; the quotes' histograms are cheap and always cover the whole log).
    """
    if until not in UNTIL:
        raise ConfigError(f"reconcile 'until' must be one of {UNTIL}, got {until!r}")
    names = Names.resolve(names, legacy)
    chosen = names.only(stream).streams[0]
    with clients.consumer(kafka_config, names.group_id) as consumer:
        since_ms = None
        if chosen.kind is not Kind.QUOTES and recent_hours > 0:
            since_ms = int((time.time() - recent_hours * 3600) * 1000)
        bounds = _bounds(consumer, chosen, until, partitions, since_ms)
        dead = dead_lettered_by_topic(consumer, names.dlq_topic).get(chosen.topic, {})
        if chosen.kind is not Kind.QUOTES:
            return _compare_keyed(consumer, es, chosen, bounds, dead)
    return _compare_offsets(es, chosen, bounds, dead)


def _compare_offsets(
    es: Any, stream: Stream, bounds: Mapping[int, tuple[int, int]], dead: Mapping[int, set[int]]
) -> list[PartitionReport]:
    """Quotes: one document per offset, counted by histograms of ``kafka.offset``."""
    index_pattern = f"{stream.index_prefix}*"
    es.options(ignore_status=404).indices.refresh(index=index_pattern, allow_no_indices=True)
    reports: list[PartitionReport] = []
    for p, (low, upper) in bounds.items():
        dead_in = sorted(o for o in dead.get(p, ()) if low <= o < upper)
        holes, indexed = find_holes(es, index_pattern, stream.topic, p, low, upper, dead_in)
        reports.append(
            PartitionReport(
                partition=p,
                low=low,
                upper=upper,
                expected=(upper - low) - len(dead_in),
                indexed=indexed,
                dead_lettered=len(dead_in),
                holes=holes,
            )
        )
    return reports


def _document_key(stream: Stream, value: bytes | None) -> tuple[str, str]:
    """A bar or gap record → ``(index, _id)`` of its document; ``InvalidQuote`` (its subclasses) if invalid."""
    if stream.kind is Kind.BARS:
        from quoteflow.bars import decode_bar

        bar = decode_bar(value)
        return month_index_name(stream.index_prefix, bar["start"]), bar_document_id(bar)
    from quoteflow.gaps import decode_gap

    gap = decode_gap(value)
    return month_index_name(stream.index_prefix, gap["start"]), gap["gap_id"]


def _compare_keyed(
    consumer: Any, es: Any, stream: Stream, bounds: Mapping[int, tuple[int, int]], dead: Mapping[int, set[int]]
) -> list[PartitionReport]:
    """Bars and gaps: each document's newest record must be indexed (its offset, or a newer one, in ES)."""
    newest: dict[tuple[str, str], tuple[int, int]] = {}  # (index, _id) → (partition, offset)
    bad: dict[int, list[int]] = {}
    records: dict[int, int] = {}
    dead_count: dict[int, int] = {}
    ranges = [PartitionRange(stream.topic, p, low, upper) for p, (low, upper) in bounds.items()]
    for batch in read_ranges(consumer, ranges):
        for msg in batch:
            p, offset = msg.partition(), msg.offset()
            records[p] = records.get(p, 0) + 1
            if offset in dead.get(p, ()):
                dead_count[p] = dead_count.get(p, 0) + 1
                continue
            try:
                key = _document_key(stream, msg.value())
            except InvalidQuote:
                bad.setdefault(p, []).append(offset)  # neither indexed nor dead-lettered: re-indexing will DLQ it
                continue
            seen = newest.get(key)
            if seen is None or seen[1] < offset:
                newest[key] = (p, offset)
    present = _present(es, stream, newest)
    reports = []
    for p, (low, upper) in bounds.items():
        mine = [(key, offset) for key, (part, offset) in newest.items() if part == p]
        holes = sorted([offset for key, offset in mine if key not in present] + bad.get(p, []))
        reports.append(
            PartitionReport(
                partition=p,
                low=low,
                upper=upper,
                expected=len(mine) + len(bad.get(p, [])),
                indexed=sum(1 for key, _ in mine if key in present),
                dead_lettered=dead_count.get(p, 0),
                holes=_merge([x for o in holes for x in (o, o + 1)]),
            )
        )
    return reports


def _present(es: Any, stream: Stream, newest: Mapping[tuple[str, str], tuple[int, int]]) -> set[tuple[str, str]]:
    """The documents of ``newest`` that Elasticsearch holds from this topic at their newest offset or later."""
    es.options(ignore_status=404).indices.refresh(index=f"{stream.index_prefix}*", allow_no_indices=True)
    keys = list(newest)
    found: set[tuple[str, str]] = set()
    for i in range(0, len(keys), MGET_CHUNK):
        chunk = keys[i : i + MGET_CHUNK]
        docs = [{"_index": index, "_id": doc_id, "_source": ["kafka.topic", "kafka.offset"]} for index, doc_id in chunk]
        response = es.mget(docs=docs)
        for key, doc in zip(chunk, response["docs"], strict=True):
            kafka = ((doc.get("_source") or {}).get("kafka") or {}) if doc.get("found") else {}
            if kafka.get("topic") == stream.topic and int(kafka.get("offset", -1)) >= newest[key][1]:
                found.add(key)
    return found


def _reconcile_stream(
    kafka_config: Mapping[str, Any],
    es: Any,
    names: Names,
    stream: Stream,
    *,
    repair: bool,
    until: str,
    retry: RetryPolicy | None,
    recent_hours: float,
) -> dict[str, Any]:
    reports = compare(kafka_config, es, names, until=until, stream=stream.kind, recent_hours=recent_hours)
    topic = stream.topic
    holes = [PartitionRange(topic, r.partition, a, b) for r in reports for a, b in r.holes]
    missing = sum(h.size for h in holes)
    out: dict[str, Any] = {
        "topic": topic,
        "partitions": [{**asdict(r), "missing": r.missing} for r in reports],
        "holes": [h.to_dict() for h in holes],
        "missing": missing,
        "repaired": 0,
    }
    for r in reports:
        if r.holes:
            logger.warning(
                "%s[%s]: %s offset(s) missing from Elasticsearch in %s", topic, r.partition, r.missing, r.holes
            )
    if repair and holes:
        summary = index_ranges(
            kafka_config,
            es,
            holes,
            names,
            group_id=backfill_group(names.group_id),
            commit=False,
            retry=retry,
            label=f"reconcile repair of {topic}",
        )
        out["repaired"] = summary.indexed + summary.stale + summary.dead_lettered
        after = compare(
            kafka_config,
            es,
            names,
            until=until,
            partitions=[r.partition for r in reports],
            stream=stream.kind,
            recent_hours=recent_hours,
        )
        out["missing_after_repair"] = sum(r.missing for r in after)
    logger.info(
        "reconcile %s: %s partition(s), %s hole(s), %s offset(s) missing, %s repaired",
        topic,
        len(reports),
        len(holes),
        missing,
        out["repaired"],
    )
    return out


def reconcile(
    kafka_config: Mapping[str, Any],
    es: Any,
    names: Names | None = None,
    *,
    repair: bool = False,
    until: str = "committed",
    retry: RetryPolicy | None = None,
    cross_check_hours: float = 0.0,
    recent_hours: float = 0.0,
    **legacy: str,
) -> dict[str, Any]:
    """Find the holes of every stream; with ``repair``, re-index them and check again. A JSON-able summary.

    Bars and gaps are checked by reading their records: ``recent_hours`` > 0 limits that to the records
    appended in that many past hours (0: the whole retained log).

    The quotes stream's report is the top level (as before bars existed); ``streams`` holds each
    stream's report by kind; ``cross_check`` (with a bars stream and ``cross_check_hours`` > 0) the
    ticks-against-bars quality figure. A bars or gaps topic that does not exist yet is skipped.
    """
    from quoteflow.kafka.admin import check_topics

    if until not in UNTIL:
        raise ConfigError(f"reconcile 'until' must be one of {UNTIL}, got {until!r}")
    names = Names.resolve(names, legacy)
    existing = set(check_topics(kafka_config, {s.topic: s.required for s in names.streams}))
    reports = {
        stream.kind.value: _reconcile_stream(
            kafka_config, es, names, stream, repair=repair, until=until, retry=retry, recent_hours=recent_hours
        )
        for stream in names.streams
        if stream.topic in existing
    }
    out: dict[str, Any] = {**reports.get(Kind.QUOTES.value, {}), "streams": reports}
    if cross_check_hours > 0:
        from quoteflow.crosscheck import cross_check

        quotes, bars = names.of_kind(Kind.QUOTES), names.of_kind(Kind.BARS)
        if quotes is not None and bars is not None:
            out["cross_check"] = cross_check(es, quotes.index_prefix, bars.index_prefix, hours=cross_check_hours)
    return out
