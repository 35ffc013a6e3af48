"""Re-index an explicit range of one stream's topic (quotes, bars or gaps) — by offsets or by time — without
touching live bookkeeping.

The range is read with ``assign()`` under a separate group id and no offset is committed, so the
live windows' committed offsets never move. Documents get the same deterministic ids (and, for
bars, the same offset versions) as in the live path, so a backfill that overlaps indexed data
rewrites it instead of duplicating it, and a backfill of older bar records leaves newer bars in
place. A range Kafka no longer retains is refused, and the message gives the range still available.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from quoteflow.elastic.bulk import RetryPolicy
from quoteflow.indexer import epoch_ms, index_ranges
from quoteflow.kafka import clients
from quoteflow.kafka.reader import (
    PartitionRange,
    RangeUnavailable,
    check_retained,
    offsets_at,
    timestamp_at,
    topic_partitions,
    watermarks,
)
from quoteflow.quotes import format_timestamp
from quoteflow.settings import ConfigError
from quoteflow.streams import Kind, Names

logger = logging.getLogger(__name__)

MODES = ("offsets", "time")


def backfill_group(group_id: str) -> str:
    """The group id backfills read under: never the live indexer's."""
    return f"{group_id}-backfill"


def resolve_ranges(
    consumer: Any,
    topic: str,
    partitions: Sequence[int] | None,
    mode: str,
    start: int | datetime,
    end: int | datetime,
) -> list[PartitionRange]:
    """Turn a backfill request into checked per-partition ranges ``[start, end)``; refuse unretained ones."""
    if mode not in MODES:
        raise ConfigError(f"backfill mode must be one of {MODES}, got {mode!r}")
    known = topic_partitions(consumer, topic)
    parts = list(partitions) if partitions else known
    unknown = sorted(set(parts) - set(known))
    if unknown:
        raise ConfigError(f"topic {topic!r} has partitions {known}; no partition {unknown}")
    if mode == "offsets":
        if not isinstance(start, int) or not isinstance(end, int):
            raise ConfigError("offsets mode needs integer start and end offsets")
        if start < 0 or end <= start:
            raise ConfigError(f"offset range [{start}, {end}) is empty or negative; end is exclusive")
        ranges = [PartitionRange(topic, p, start, end) for p in parts]
        check_retained(consumer, ranges)
        return ranges
    if not isinstance(start, datetime) or not isinstance(end, datetime):
        raise ConfigError("time mode needs ISO-8601 start and end datetimes")
    start_ms, end_ms = epoch_ms(start), epoch_ms(end)
    if end_ms <= start_ms:
        raise ConfigError(f"time range [{start.isoformat()}, {end.isoformat()}) is empty; end is exclusive")
    starts = offsets_at(consumer, topic, parts, start_ms)
    ends = offsets_at(consumer, topic, parts, end_ms)
    ranges = []
    for p in parts:
        low, high = watermarks(consumer, topic, p)
        if low > 0 and starts[p] <= low:
            # Records before `low` were deleted; refuse if any of them could have been in the range.
            first_ms = timestamp_at(consumer, topic, p, low) if low < high else None
            if first_ms is None or first_ms > start_ms:
                since = format_timestamp(first_ms / 1000, milliseconds=True) if first_ms else "nothing"
                raise RangeUnavailable(
                    f"{topic}[{p}] no longer retains records from {start.isoformat()}; it holds offsets "
                    f"[{low}, {high}), appended since {since}"
                )
        ranges.append(PartitionRange(topic, p, starts[p], max(starts[p], ends[p])))
    return ranges


def backfill(
    kafka_config: Mapping[str, Any],
    es: Any,
    names: Names | None = None,
    *,
    mode: str,
    start: int | datetime,
    end: int | datetime,
    partitions: Sequence[int] | None = None,
    stream: Kind | str = Kind.QUOTES,
    dry_run: bool = False,
    retry: RetryPolicy | None = None,
    **legacy: str,
) -> dict[str, Any]:
    """Re-index exactly the requested range of ``stream``'s topic (idempotent); with ``dry_run`` only resolve it.

    (``legacy``: the older ``topic``/``dlq_topic``/``index_prefix``/``group_id`` keywords, quotes only.)
    """
    try:
        kind = Kind(stream)
    except ValueError:
        raise ConfigError(f"backfill stream must be one of {[k.value for k in Kind]}, got {stream!r}") from None
    names = Names.resolve(names, legacy).only(kind)
    topic, group_id = names.streams[0].topic, names.group_id
    with clients.consumer(kafka_config, backfill_group(group_id)) as consumer:
        ranges = resolve_ranges(consumer, topic, partitions, mode, start, end)
    planned = sum(r.size for r in ranges)
    if dry_run:
        logger.info("backfill dry run of %s: %s records in %s", topic, planned, [r.to_dict() for r in ranges])
        return {"dry_run": True, "stream": kind.value, "records": planned, "ranges": [r.to_dict() for r in ranges]}
    summary = index_ranges(
        kafka_config,
        es,
        ranges,
        names,
        group_id=backfill_group(group_id),
        commit=False,
        retry=retry,
        label=f"backfill of {topic} ({mode} {start}..{end})",
    )
    return {"dry_run": False, "stream": kind.value, "records": planned, **summary.to_dict()}
