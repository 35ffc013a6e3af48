"""The pipeline's jobs, each written once: the DAG tasks and the CLI commands are single calls into here.

A :class:`Pipeline` holds the names a job works on (quotes topic, dead-letter topic, index prefix,
consumer group) and how to reach the services (a librdkafka config, Elasticsearch client
arguments). Every job returns a plain, JSON-able summary. Configuration errors are raised as
:class:`~quoteflow.settings.ConfigError`; the DAGs turn them into failures without retries.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from quoteflow import indexer
from quoteflow.elastic.bulk import RetryPolicy
from quoteflow.settings import (
    BARS_INDEX_PREFIX,
    BARS_TOPIC,
    CONSUMER_GROUP,
    DEFAULT_HISTORY_BARS,
    DEFAULT_RESOLUTION,
    DLQ_TOPIC,
    GAPS_INDEX_PREFIX,
    GAPS_TOPIC,
    INDEX_PREFIX,
    QUOTES_TOPIC,
    ConfigError,
    ConnectionInfo,
)
from quoteflow.streams import Kind, Names, Stream

HOUR_MS = 3600 * 1000


@dataclass(frozen=True)
class Pipeline:
    """What a job works on: the topic, dead-letter topic, index prefix and group, and how to reach Kafka and ES."""

    kafka: Mapping[str, Any]
    es_args: Mapping[str, Any] | None = None
    topic: str = QUOTES_TOPIC
    dlq_topic: str = DLQ_TOPIC
    index_prefix: str = INDEX_PREFIX
    group_id: str = CONSUMER_GROUP
    retry: RetryPolicy | None = None
    bars_topic: str = BARS_TOPIC
    bars_index_prefix: str = BARS_INDEX_PREFIX
    gaps_topic: str = GAPS_TOPIC
    gaps_index_prefix: str = GAPS_INDEX_PREFIX

    @contextmanager
    def elasticsearch(self) -> Iterator[Any]:
        """An Elasticsearch client for one job, closed after it."""
        from elasticsearch import Elasticsearch

        if self.es_args is None:
            raise ConfigError("this job needs Elasticsearch, and no Elasticsearch connection was given")
        with Elasticsearch(**self.es_args) as es:
            yield es

    @property
    def names(self) -> Names:
        """The streams (quotes; bars and gaps unless their topic is ``""``), DLQ topic and group, as one value."""
        streams = [Stream(Kind.QUOTES, self.topic, self.index_prefix)]
        if self.bars_topic:
            streams.append(Stream(Kind.BARS, self.bars_topic, self.bars_index_prefix))
        if self.gaps_topic:
            streams.append(Stream(Kind.GAPS, self.gaps_topic, self.gaps_index_prefix))
        return Names(tuple(streams), self.dlq_topic, self.group_id)


# ------------------------------------------------------------------ setup


@dataclass(frozen=True)
class TopicSettings:
    """Partitions, retentions and replication of the quotes, bars, gaps and dead-letter topics."""

    partitions: int = 3
    retention_hours: float = 72.0
    dlq_retention_days: float = 30.0
    replication_factor: int = 1


def setup_topics(p: Pipeline, settings: TopicSettings) -> dict[str, dict[str, Any]]:
    """Create or align the quotes, bars, gaps and dead-letter topics; per topic, whether and how it changed.

    Bars like quotes (partitions, retention, LogAppendTime); gaps on one partition; a ``""`` bars or
    gaps topic is not created.
    """
    from quoteflow.kafka.admin import (
        admin_client,
        bars_topic_spec,
        dlq_topic_spec,
        ensure_topic,
        gaps_topic_spec,
        quotes_topic_spec,
    )

    admin = admin_client(p.kafka)
    parts, rf = int(settings.partitions), int(settings.replication_factor)
    retention_ms = int(settings.retention_hours * HOUR_MS)
    specs = [
        quotes_topic_spec(p.topic, parts, retention_ms, rf),
        dlq_topic_spec(p.dlq_topic, parts, int(settings.dlq_retention_days * 24 * HOUR_MS), rf),
    ]
    if p.bars_topic:
        specs.append(bars_topic_spec(p.bars_topic, parts, retention_ms, rf))
    if p.gaps_topic:
        specs.append(gaps_topic_spec(p.gaps_topic, retention_ms, rf))
    results = [ensure_topic(admin, spec) for spec in specs]
    return {r.name: {"created": r.created, "changes": r.changes, "changed": r.changed} for r in results}


def setup_template(p: Pipeline) -> str:
    """Create or update the ``quotes``, ``bars`` and ``gaps`` index templates (each logged).

    ``created`` if any was created, else ``updated`` if any was updated, else ``unchanged``.
    """
    from quoteflow.elastic.template import ensure_templates

    with p.elasticsearch() as es:
        done = set(ensure_templates(es).values())
    return next((outcome for outcome in ("created", "updated") if outcome in done), "unchanged")


def setup_kibana(kibana: ConnectionInfo | None, timeout_s: float) -> dict[str, Any]:
    """The data view and saved objects in Kibana; a logged skip without a Kibana connection."""
    from quoteflow import kibana as kibana_setup

    return kibana_setup.setup_kibana(kibana, timeout_s=timeout_s)


def setup(
    p: Pipeline, settings: TopicSettings, kibana: ConnectionInfo | None, kibana_timeout_s: float
) -> dict[str, Any]:
    """Topics, index template and Kibana objects, in that order (idempotent); ``changed`` if anything did."""
    topics = setup_topics(p, settings)
    template = setup_template(p)
    objects = setup_kibana(kibana, kibana_timeout_s)
    changed = any(t["changed"] for t in topics.values()) or template != "unchanged" or objects.get("changed", False)
    return {"changed": changed, "topics": topics, "template": template, "kibana": objects}


# ------------------------------------------------------------------ produce


def produce(
    p: Pipeline,
    *,
    url: str,
    symbols: Sequence[str],
    tradingview: ConnectionInfo | None = None,
    max_seconds: float | None = None,
    stats_interval: float = 30.0,
    flush_timeout: float = 4.0,
    check_topic: bool = True,
    record_path: str | None = None,
    stop: threading.Event | None = None,
    shard: str | None = None,
    start_delay_s: float = 0.0,
    on_stats: Callable[[dict[str, Any]], None] | None = None,
    bar_resolutions: Sequence[str] = (),
    bar_symbols: Sequence[str] | None = None,
    history_bars: int = DEFAULT_HISTORY_BARS,
    **client_overrides: Any,
) -> dict[str, Any]:
    """Stream quotes from ``url`` into the quotes topic until ``stop`` or ``max_seconds``; the run's summary.

    With ``bar_resolutions`` (e.g. ``["1"]``), also the bars of ``bar_symbols`` (default: all) to the bars
    topic, ``history_bars`` of history on every connect, and every feed gap to the gaps topic, filled.

    A default ``url`` (TradingView's) gives way to the ``tradingview`` connection's host, if it has one.
    ``shard`` names this connection's share of the symbols (stats, summary, its own ``record_path``);
    it connects after ``start_delay_s`` (stop-aware), which counts against ``max_seconds``. ``on_stats``
    gets each periodic stats line's figures as a dict.

    Raises :class:`~quoteflow.kafka.quote_producer.DeliveryFailed` (summary attached) if records were lost.
    """
    import dataclasses
    import time

    from quoteflow import shards
    from quoteflow.stream import ProducerRun, client_config, feed_url, run_producer, with_bars

    if start_delay_s < 0 or (max_seconds is not None and start_delay_s >= max_seconds):
        raise ConfigError(f"start_delay_s must be >= 0 and below max_seconds, got {start_delay_s!r}")
    record = shards.record_path(record_path, shard)
    run = ProducerRun(
        client=with_bars(
            client_config(
                feed_url(url, tradingview), list(symbols), tradingview, record_path=record, **client_overrides
            ),
            bar_resolutions,
            bar_symbols,
            history_bars,
        ),
        kafka=p.kafka,
        topic=p.topic,
        max_seconds=max_seconds,
        stats_interval=stats_interval,
        flush_timeout=flush_timeout,
        check_topic=check_topic,
        shard=shards.UNSHARDED if shard is None else shard,
        on_stats=on_stats,
        bars_topic=p.bars_topic,
        gaps_topic=p.gaps_topic,
    )
    stop = stop or threading.Event()
    if start_delay_s > 0:
        # Checked above, before waiting: a refused configuration fails at once, not after the delay.
        waited_from = time.monotonic()
        shards.wait_to_start(start_delay_s, stop)
        if max_seconds is not None:
            remaining = max(0.001, max_seconds - (time.monotonic() - waited_from))
            run = dataclasses.replace(run, max_seconds=remaining)
    return run_producer(run, stop)


def bars(
    p: Pipeline,
    *,
    url: str,
    symbols: Sequence[str],
    resolutions: Sequence[str] = (DEFAULT_RESOLUTION,),
    count: int = DEFAULT_HISTORY_BARS,
    bar_range: str = "",
    tradingview: ConnectionInfo | None = None,
    max_seconds: float = 120.0,
    check_topic: bool = True,
    stop: threading.Event | None = None,
    **client_overrides: Any,
) -> dict[str, Any]:
    """A history-only fetch: ``count`` bars (or ``bar_range``, ``r,<from>:<to>``) of each symbol and resolution.

    No quote session; ends once every series' history is complete (``stopped_by: history_complete``) or
    after ``max_seconds``. Bars go to the bars topic with ``origin: history``.
    """
    from quoteflow.stream import ProducerRun, client_config, feed_url, run_producer, with_bars

    config = client_config(feed_url(url, tradingview), list(symbols), tradingview, **client_overrides)
    run = ProducerRun(
        client=with_bars(config, resolutions, None, count, bar_range=bar_range, quotes=False),
        kafka=p.kafka,
        topic=p.topic,
        max_seconds=max_seconds,
        check_topic=check_topic,
        bars_topic=p.bars_topic,
        handover=False,
    )
    return run_producer(run, stop)


# ------------------------------------------------------------------ index


def plan(p: Pipeline, start: datetime, end: datetime, groups: int = 1) -> list[list[dict[str, Any]]]:
    """Step 1 of a window: its per-partition offset ranges, split into at most ``groups`` groups."""
    return indexer.plan_window(p.kafka, start, end, p.names, groups=groups)


def index_group(p: Pipeline, ranges: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Step 2: index exactly these ranges (bad records to the DLQ); nothing is committed here."""
    with p.elasticsearch() as es:
        summary = indexer.index_ranges(p.kafka, es, ranges, p.names, retry=p.retry)
    return summary.to_dict()


def finish(
    p: Pipeline, summaries: Sequence[Mapping[str, Any]], start: datetime, end: datetime, commit: bool = True
) -> dict[str, Any]:
    """Step 3: commit the window's ends (for lag tools) and log its one summary line; the window's summary."""
    total = indexer.finish_window(p.kafka, summaries, start, end, p.names, commit=commit)
    return total.to_dict()


def index_window(p: Pipeline, start: datetime, end: datetime, *, commit: bool = True) -> dict[str, Any]:
    """One window through the DAG's three steps in one process: plan → index the group → finish."""
    with p.elasticsearch() as es:
        total = indexer.index_window(p.kafka, es, start, end, p.names, retry=p.retry, commit=commit)
    return total.to_dict()


# ------------------------------------------------------------------ backfill and reconcile


def backfill_request(mode: str, start: str | int, end: str | int) -> tuple[int, int] | tuple[datetime, datetime]:
    """A backfill's bounds from text: offsets (``mode="offsets"``) or ISO-8601 datetimes (``mode="time"``)."""
    from quoteflow.backfill import MODES

    if mode not in MODES:
        raise ConfigError(f"backfill mode must be one of {MODES}, got {mode!r}")
    if mode == "offsets":
        try:
            return int(start), int(end)
        except ValueError:
            raise ConfigError(f"offsets mode needs integer start and end offsets, got {start!r} and {end!r}") from None
    return indexer.parse_bound(str(start)), indexer.parse_bound(str(end))


def backfill(
    p: Pipeline,
    *,
    mode: str,
    start: str | int,
    end: str | int,
    partitions: Sequence[int] | None = None,
    dry_run: bool = False,
    stream: str = "quotes",
) -> dict[str, Any]:
    """Re-index an explicit offset or time range of ``stream``'s topic (quotes, bars or gaps; never committing).

    With ``dry_run`` only resolve it.
    """
    from quoteflow.backfill import backfill as run_backfill

    first, last = backfill_request(mode, start, end)
    kwargs: dict[str, Any] = {
        "mode": mode,
        "start": first,
        "end": last,
        "partitions": list(partitions) if partitions else None,
        "stream": stream,
        "dry_run": dry_run,
        "retry": p.retry,
    }
    if dry_run:
        return run_backfill(p.kafka, None, p.names, **kwargs)
    with p.elasticsearch() as es:
        return run_backfill(p.kafka, es, p.names, **kwargs)


def reconcile(
    p: Pipeline,
    *,
    repair: bool = False,
    until: str = "committed",
    cross_check_hours: float = 2.0,
    recent_hours: float = 3.0,
) -> dict[str, Any]:
    """Compare Kafka with Elasticsearch for every stream (and repair the holes); ``ok``: no hole remains in any.

    Without ``repair`` the holes found are what remains; with it, what the check after the repair found.
    ``cross_check`` (ticks against the closed bars of the last ``cross_check_hours``) is a quality
    figure beside the verdict, not part of it. Bars and gaps are checked over the records of the last
    ``recent_hours`` (0: all retained; reading them is the cost), quotes always over the whole log.
    """
    from quoteflow.reconcile import reconcile as run_reconcile

    with p.elasticsearch() as es:
        result = run_reconcile(
            p.kafka,
            es,
            p.names,
            repair=repair,
            until=until,
            retry=p.retry,
            cross_check_hours=cross_check_hours,
            recent_hours=recent_hours,
        )
    remaining = sum(int(s.get("missing_after_repair", s["missing"])) for s in result["streams"].values())
    return {**result, "remaining": remaining, "ok": remaining == 0}


# ------------------------------------------------------------------ dead letters


def dlq_list(p: Pipeline, *, reason: str | None = None, limit: int = 50) -> dict[str, Any]:
    """Count the dead letters by reason and show up to ``limit`` of them."""
    from quoteflow.kafka.dlq import list_dead_letters

    return list_dead_letters(p.kafka, p.dlq_topic, reason=reason, limit=limit)


def dlq_replay(p: Pipeline, *, reason: str | None = None) -> dict[str, Any]:
    """Re-produce the dead letters not replayed before (only ``reason``'s, if given) into the quotes topic."""
    from quoteflow.kafka.dlq import replay_dead_letters

    # The DLQ is shared: a bar's or gap's letter goes back to its own topic.
    routes = {topic: topic for topic in (p.bars_topic, p.gaps_topic) if topic}
    return replay_dead_letters(p.kafka, p.dlq_topic, p.topic, reason=reason, routes=routes)


# ------------------------------------------------------------------ maintenance


def retention(
    p: Pipeline, *, retention_days: int = 30, dry_run: bool = False, prefer_ilm: bool = True
) -> dict[str, Any]:
    """Delete the quotes, bars and gaps indices past retention, or defer to ILM where the cluster has it."""
    from quoteflow.maintenance import apply_retention, pipeline_series

    series = pipeline_series(p.index_prefix, p.bars_index_prefix, p.gaps_index_prefix)
    with p.elasticsearch() as es:
        return apply_retention(es, series, retention_days=retention_days, dry_run=dry_run, prefer_ilm=prefer_ilm)


def dlq_ages(p: Pipeline) -> dict[str, Any]:
    """How many dead letters per reason, and how old the oldest and newest are (days), beside the topic's retention."""
    from quoteflow.maintenance import dlq_age_report

    return dlq_age_report(p.kafka, p.dlq_topic)
