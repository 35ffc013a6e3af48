"""
### quotes_reconcile — find and repair holes between Kafka and Elasticsearch (hourly)

For each partition of the quotes topic, compares what Kafka holds — from the low watermark to the
indexer group's committed offset, the end of the last completed window — with what Elasticsearch
holds, counted by `kafka.offset` with histogram aggregations (no document scan), minus the
offsets that went to the dead-letter topic. Holes are reported as offset ranges; with `repair`
(the default) they are re-indexed through the idempotent backfill path and checked again. The task
fails if holes remain after a repair.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from _shared.connections import connection_info
from _shared.params import dlq_topic_param, group_param, index_prefix_param, topic_param
from airflow.sdk import Param, dag, task

from quoteflow.settings import ELASTICSEARCH_CONN_ID, KAFKA_CONN_ID


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
        from elasticsearch import Elasticsearch

        from quoteflow.reconcile import reconcile as run_reconcile
        from quoteflow.settings import elasticsearch_client_args, kafka_config

        with Elasticsearch(**elasticsearch_client_args(connection_info(ELASTICSEARCH_CONN_ID))) as es:
            result = run_reconcile(
                kafka_config(connection_info(KAFKA_CONN_ID).extra),
                es,
                repair=bool(params["repair"]),
                until=params["until"],
                topic=params["topic"],
                dlq_topic=params["dlq_topic"],
                index_prefix=params["index_prefix"],
                group_id=params["group_id"],
            )
        remaining = result.get("missing_after_repair", 0 if not params["repair"] else result["missing"])
        if params["repair"] and remaining:
            raise RuntimeError(f"{remaining} offset(s) still missing from Elasticsearch after repair: {result}")
        return result

    reconcile()


quotes_reconcile()
