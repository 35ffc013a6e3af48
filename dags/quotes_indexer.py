"""
### quotes_indexer — Kafka → Elasticsearch in fixed windows (10 s by default)

Every run owns its data interval `[data_interval_start, data_interval_end)`, which is
`QUOTEFLOW_WINDOW_SECONDS` long (default 10; read once, where this file is parsed). Two layouts,
chosen by `QUOTEFLOW_PARTITION_GROUPS` (default 1), also read where this file is parsed:

* **one group** (the default): a single task **index_window** plans, indexes and finishes the window
  in one process (`jobs.index_window`), so a run pays for one task start, not three or more.
* **several groups**: **plan** → **index_group** (one mapped task per group) → **finish**:

1. **plan** turns the window into per-partition offset ranges with `offsets_for_times`
   (the topic's timestamps are `LogAppendTime`, so they only grow) and splits them into
   `partition_groups` groups. It refuses to run, saying how to fix it, if the topic is not
   `LogAppendTime`.
2. **index_group** `assign()`s its ranges, reads exactly them, indexes with
   `_id = <topic>-<partition>-<offset>` and dead-letters invalid records and mapping rejections with
   origin and reason. Elasticsearch outages and 429s are retried with capped, jittered backoff inside
   `retry_budget_s`; then the task fails and nothing is committed.
3. **finish** commits the group's offsets (for lag tools only) and logs one summary line.

Re-running any run rewrites the same documents: no duplicates, no loss. `catchup` and
`airflow backfill create` re-process missed windows; `quotes_backfill` re-indexes arbitrary ranges.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from _shared.params import dlq_topic_param, group_param, index_prefix_param, stream_params, topic_param
from _shared.tasks import config_errors_fail, pipeline
from airflow.sdk import DeltaDataIntervalTimetable, Param, dag, task

WINDOW_VARIABLE = "QUOTEFLOW_WINDOW_SECONDS"
GROUPS_VARIABLE = "QUOTEFLOW_PARTITION_GROUPS"
WINDOW_LIMITS = (5, 3600)  # below 5 s a run's own start-up (3-5 s) outlasts its window
GROUPS_LIMITS = (1, 64)


def _setting(variable: str, default: int, limits: tuple[int, int], what: str) -> int:
    """An integer from the environment, refused with a message that names ``variable`` and the fix."""
    raw = os.environ.get(variable, "").strip() or str(default)
    low, high = limits
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ValueError(
            f"{variable}={raw!r} is not {what}: set it to a whole number from {low} to {high} (default {default})"
        )
    return value


# Both read once, here: the schedule and the task layout are the DAG's shape, fixed when the file is parsed.
# 10 s: bench/freshness.py measured p95 freshness 34 s → 15 s for no more CPU than 30 s windows (one task per run).
WINDOW_SECONDS = _setting(WINDOW_VARIABLE, 10, WINDOW_LIMITS, "a window length in seconds")
PARTITION_GROUPS = _setting(GROUPS_VARIABLE, 1, GROUPS_LIMITS, "a number of partition groups")
# Catchup starts here; set it to the deployment time so a fresh install does not replay days of empty windows.
START_DATE = datetime.fromisoformat(os.environ.get("QUOTEFLOW_INDEXER_START_DATE", "2026-11-28T00:00:00+00:00"))

if PARTITION_GROUPS == 1:
    groups_param = Param(
        1,
        type="integer",
        minimum=1,
        maximum=1,
        title="Partition groups",
        description=f"One task indexes the whole window; more groups: set {GROUPS_VARIABLE} where DAGs are parsed.",
    )
else:
    groups_param = Param(
        PARTITION_GROUPS,
        type="integer",
        minimum=1,
        maximum=GROUPS_LIMITS[1],
        title="Partition groups",
        description="How many mapped indexing tasks share the window's partitions.",
    )


@dag(
    dag_id="quotes_indexer",
    schedule=DeltaDataIntervalTimetable(timedelta(seconds=WINDOW_SECONDS)),
    start_date=START_DATE if START_DATE.tzinfo else START_DATE.replace(tzinfo=UTC),
    catchup=True,
    # One window at a time: committed offsets then always mark a completed prefix of the log.
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=10),
    tags=["quoteflow", "indexer"],
    doc_md=__doc__,
    default_args={
        "retries": 3,
        "retry_delay": timedelta(seconds=10),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=2),
        "execution_timeout": timedelta(minutes=8),
    },
    params={
        "partition_groups": groups_param,
        "topic": topic_param(),
        "dlq_topic": dlq_topic_param(),
        "index_prefix": index_prefix_param(),
        **stream_params(),
        "group_id": group_param(
            "Consumer group (for lag tools)",
            "Offsets are committed under this group after each window, only so lag tools work.",
        ),
        "retry_budget_s": Param(
            120,
            type="number",
            minimum=1,
            title="Retry budget (s)",
            description="How long one bulk chunk may retry Elasticsearch outages and 429s before the task fails.",
        ),
    },
)
def quotes_indexer():
    if PARTITION_GROUPS == 1:

        @task
        def index_window(data_interval_start=None, data_interval_end=None, params=None) -> dict:
            """Plan, index and finish the window in this one task (one partition group)."""
            from quoteflow import jobs

            with config_errors_fail():
                return jobs.index_window(pipeline(params), data_interval_start, data_interval_end)

        index_window()
        return

    @task
    def plan(data_interval_start=None, data_interval_end=None, params=None) -> list[list[dict]]:
        """The window's offset ranges, split into partition groups."""
        from quoteflow import jobs

        with config_errors_fail():
            p = pipeline(params, elasticsearch=False)
            return jobs.plan(p, data_interval_start, data_interval_end, params["partition_groups"])

    @task
    def index_group(ranges: list[dict], params=None) -> dict:
        """Index exactly these offset ranges (or dead-letter their bad records)."""
        from quoteflow import jobs

        with config_errors_fail():
            return jobs.index_group(pipeline(params), ranges)

    @task
    def finish(summaries, data_interval_start=None, data_interval_end=None, params=None) -> dict:
        """Commit the window's offsets (for lag tools) and log its summary line."""
        from quoteflow import jobs

        with config_errors_fail():
            p = pipeline(params, elasticsearch=False)
            return jobs.finish(p, list(summaries), data_interval_start, data_interval_end)

    finish(index_group.expand(ranges=plan()))


quotes_indexer()
