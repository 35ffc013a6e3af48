"""
### quotes_backfill — re-index an exact range of the quotes, bars or gaps topic

Pick a stream (quotes, bars or gaps: its topic is re-read), partitions (empty = all), a mode —
**offsets** (`start`/`end` are offsets, end exclusive) or **time** (`start`/`end` are ISO-8601
datetimes, end exclusive, resolved with `offsets_for_times`) — and optionally `dry_run` to only see
the resolved ranges. The range is read with `assign()` under a separate consumer group and no offset
is committed, so the live windows' bookkeeping never moves. Documents keep their `_id` (quotes
`<topic>-<partition>-<offset>`, bars `<symbol>-<resolution>-<start>` versioned by offset, gaps
`gap_id`), so overlapping data is rewritten, never duplicated, and replaying older bar records leaves
newer bars in place (counted as `stale`). A range Kafka no longer retains is refused, and the error
names the available range.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from _shared.params import dlq_topic_param, group_param, index_prefix_param, stream_params, topic_param
from _shared.tasks import config_errors_fail, pipeline
from airflow.sdk import Param, dag, task


@dag(
    dag_id="quotes_backfill",
    schedule=None,
    start_date=datetime(2026, 11, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=2,
    tags=["quoteflow", "indexer", "backfill"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20), "retry_exponential_backoff": True},
    params={
        "stream": Param(
            "quotes",
            type="string",
            enum=["quotes", "bars", "gaps"],
            title="Stream",
            description="Which stream's topic to re-read (the topic Params below name them).",
        ),
        "topic": topic_param("The quotes topic."),
        "partitions": Param(
            [],
            type="array",
            items={"type": "integer", "minimum": 0},
            title="Partitions",
            description="Partition numbers to re-index; leave empty for all partitions.",
        ),
        "mode": Param(
            "offsets",
            type="string",
            enum=["offsets", "time"],
            title="Mode",
            values_display={"offsets": "Offset range", "time": "Time range (ISO-8601)"},
            description="Whether start and end are offsets or datetimes.",
        ),
        "start": Param(
            "0",
            type="string",
            minLength=1,
            title="Start (inclusive)",
            description="First offset (offsets mode) or ISO-8601 datetime, e.g. 2026-11-28T03:00:00Z.",
        ),
        "end": Param(
            "1",
            type="string",
            minLength=1,
            title="End (exclusive)",
            description="Offset after the last one (offsets mode) or ISO-8601 datetime (time mode).",
        ),
        "dry_run": Param(
            False, type="boolean", title="Dry run", description="Only resolve and report the ranges; index nothing."
        ),
        "dlq_topic": dlq_topic_param(),
        "index_prefix": index_prefix_param(),
        **stream_params(),
        "group_id": group_param("Live consumer group", "Backfills read as '<group>-backfill' and never commit."),
    },
)
def quotes_backfill():
    @task
    def run_backfill(params=None) -> dict:
        """Resolve the requested range and re-index it (or only report it on a dry run)."""
        from quoteflow import jobs

        with config_errors_fail(ValueError):  # a wrong request: retrying cannot help
            return jobs.backfill(
                pipeline(params, elasticsearch=not params["dry_run"]),
                mode=params["mode"],
                start=params["start"],
                end=params["end"],
                partitions=params["partitions"],
                dry_run=bool(params["dry_run"]),
                stream=params["stream"],
            )

    run_backfill()


quotes_backfill()
