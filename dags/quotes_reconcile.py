"""
### quotes_reconcile — find and repair holes between Kafka and Elasticsearch (hourly)

For each partition of the quotes topic, compares what Kafka holds — from the low watermark to the
indexer group's committed offset, the end of the last completed window — with what Elasticsearch
holds, counted by `kafka.offset` with histogram aggregations (no document scan), minus the
offsets that went to the dead-letter topic. Holes are reported as offset ranges; with `repair`
(the default) they are re-indexed through the idempotent backfill path and checked again. The task
fails if holes remain: after the repair, or, with `repair` off, the holes found (the CLI's verdict too).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from _shared.params import dlq_topic_param, group_param, index_prefix_param, topic_param
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
        "topic": topic_param(),
        "dlq_topic": dlq_topic_param(),
        "index_prefix": index_prefix_param(),
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
            result = jobs.reconcile(pipeline(params), repair=bool(params["repair"]), until=params["until"])
        if not result["ok"]:
            # A repair may succeed on a retry; a report of holes without one will say the same again.
            failure = RuntimeError if params["repair"] else AirflowFailException
            raise failure(f"{result['remaining']} offset(s) missing from Elasticsearch: {result}")
        return result

    reconcile()


quotes_reconcile()
