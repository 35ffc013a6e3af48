"""
### quotes_reconcile — find and repair holes between Kafka and Elasticsearch (hourly); ticks against bars

For each partition of the quotes topic, compares what Kafka holds — from the low watermark to the
indexer group's committed offset, the end of the last completed window — with what Elasticsearch
holds, counted by `kafka.offset` with histogram aggregations (no document scan), minus the
offsets that went to the dead-letter topic. Holes are reported as offset ranges; with `repair`
(the default) they are re-indexed through the idempotent backfill path and checked again. The task
fails if holes remain: after the repair, or, with `repair` off, the holes found (the CLI's verdict too).

The bars and gaps topics are checked too: their documents are rewritten by later records (one per bar,
one per gap), so their retained records are read and each document must hold its newest record's
offset (one `mget` per thousand ids); a missing or older document is a hole, repaired the same way.
Reading them is the cost, so only the records of the last `recent_hours` (default 3) are read; each
hourly run overlaps the previous one.

**Cross-check** (`cross_check_hours`, default 2): for every closed minute (or seconds) bar of that span
with ticks in it, every tick price must lie within `[low, high]` and the last tick must equal the
close. The bars that disagree are counted and the first 20 named in `cross_check` — a quality figure
beside the verdict; it does not fail the task.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from _shared.params import dlq_topic_param, group_param, index_prefix_param, stream_params, topic_param
from _shared.tasks import config_errors_fail, pipeline
from airflow.sdk import Param, dag, task


@dag(
    dag_id="quotes_reconcile",
    schedule="@hourly",
    start_date=datetime(2026, 11, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["quoteflow", "indexer", "reconcile"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "repair": Param(True, type="boolean", title="Repair", description="Re-index the holes found."),
        "until": Param(
            "committed",
            type="string",
            enum=["committed", "high"],
            title="Check up to",
            description="'committed': the last completed window; 'high': the log end (may race live runs).",
        ),
        "recent_hours": Param(
            3,
            type="number",
            minimum=0,
            title="Bars and gaps span (hours)",
            description="Check the bars and gaps records of this many past hours (0: the whole retained log).",
        ),
        "cross_check_hours": Param(
            2,
            type="number",
            minimum=0,
            title="Cross-check span (hours)",
            description="Check the closed bars of this many past hours against their ticks; 0 turns it off.",
        ),
        "topic": topic_param(),
        "dlq_topic": dlq_topic_param(),
        "index_prefix": index_prefix_param(),
        **stream_params(),
        "group_id": group_param(
            "Indexer consumer group", "Its committed offsets mark the end of the last completed window."
        ),
    },
)
def quotes_reconcile():
    @task
    def reconcile(params=None) -> dict:
        """Report (and repair) holes; fail if any remain."""
        from airflow.sdk.exceptions import AirflowFailException

        from quoteflow import jobs

        with config_errors_fail():
            result = jobs.reconcile(
                pipeline(params),
                repair=bool(params["repair"]),
                until=params["until"],
                cross_check_hours=float(params["cross_check_hours"]),
                recent_hours=float(params["recent_hours"]),
            )
        if not result["ok"]:
            # A repair may succeed on a retry; a report of holes without one will say the same again.
            failure = RuntimeError if params["repair"] else AirflowFailException
            raise failure(f"{result['remaining']} offset(s) missing from Elasticsearch: {result}")
        return result

    reconcile()


quotes_reconcile()
