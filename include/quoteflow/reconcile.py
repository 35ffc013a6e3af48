"""Reconcile: compare what Kafka holds with what Elasticsearch holds, per partition, and list or repair the holes.

For each partition, Kafka's side is ``[low watermark, committed offset)`` — the committed offset is
the end of the last window that completed (or the high watermark, on request). Elasticsearch's
side is counted with a ``histogram`` aggregation on ``kafka.offset`` (never a document scan):
buckets that hold fewer documents than offsets (minus the offsets that went to the DLQ) are
refined with finer histograms until the missing offsets are exact. Repair re-indexes the holes
with the backfill path, which is idempotent, then checks again.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from quoteflow.backfill import backfill_group
from quoteflow.elastic.bulk import RetryPolicy
from quoteflow.indexer import index_ranges
from quoteflow.kafka import clients
from quoteflow.kafka.dlq import dead_lettered_offsets
from quoteflow.kafka.reader import PartitionRange, topic_partitions, watermarks
from quoteflow.settings import CONSUMER_GROUP, DLQ_TOPIC, INDEX_PREFIX, QUOTES_TOPIC, ConfigError

logger = logging.getLogger(__name__)

MAX_BUCKETS = 5000
MAX_QUERIES = 500
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


def compare(
    kafka_config: Mapping[str, Any],
    es: Any,
    *,
    topic: str = QUOTES_TOPIC,
    dlq_topic: str = DLQ_TOPIC,
    index_prefix: str = INDEX_PREFIX,
    group_id: str = CONSUMER_GROUP,
    until: str = "committed",
    partitions: Sequence[int] | None = None,
) -> list[PartitionReport]:
    """Per partition, what Kafka holds versus what Elasticsearch (plus the DLQ) holds, with the holes."""
    from confluent_kafka import TopicPartition

    if until not in UNTIL:
        raise ConfigError(f"reconcile 'until' must be one of {UNTIL}, got {until!r}")
    index_pattern = f"{index_prefix}*"
    reports: list[PartitionReport] = []
    with clients.consumer(kafka_config, group_id) as consumer:
        parts = list(partitions) if partitions else topic_partitions(consumer, topic)
        committed = {
            tp.partition: tp.offset
            for tp in consumer.committed([TopicPartition(topic, p) for p in parts], timeout=15.0)
        }
        bounds = {}
        for p in parts:
            low, high = watermarks(consumer, topic, p)
            upper = high if until == "high" else min(high, max(low, committed.get(p, -1)))
            bounds[p] = (low, upper)
        dead = dead_lettered_offsets(consumer, dlq_topic, topic)
    es.options(ignore_status=404).indices.refresh(index=index_pattern, allow_no_indices=True)
    for p in parts:
        low, upper = bounds[p]
        dead_in = sorted(o for o in dead.get(p, ()) if low <= o < upper)
        holes, indexed = find_holes(es, index_pattern, topic, p, low, upper, dead_in)
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


def reconcile(
    kafka_config: Mapping[str, Any],
    es: Any,
    *,
    repair: bool = False,
    topic: str = QUOTES_TOPIC,
    dlq_topic: str = DLQ_TOPIC,
    index_prefix: str = INDEX_PREFIX,
    group_id: str = CONSUMER_GROUP,
    until: str = "committed",
    retry: RetryPolicy | None = None,
) -> dict[str, Any]:
    """Find the holes per partition; with ``repair``, re-index them and check again. Returns a JSON-able summary."""
    args: dict[str, Any] = {"topic": topic, "dlq_topic": dlq_topic, "index_prefix": index_prefix, "group_id": group_id}
    reports = compare(kafka_config, es, until=until, **args)
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
            dlq_topic=dlq_topic,
            index_prefix=index_prefix,
            group_id=backfill_group(group_id),
            commit=False,
            retry=retry,
            label=f"reconcile repair of {topic}",
        )
        out["repaired"] = summary.indexed + summary.dead_lettered
        after = compare(kafka_config, es, until=until, partitions=[r.partition for r in reports], **args)
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
