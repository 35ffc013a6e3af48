"""
### quotes_setup — topics, index template and Kibana objects (safe to run again and again)

- **kafka_topics**: creates `quotes.tradingview`, `bars.tradingview` (same partitions and retention) and
  `gaps.tradingview` (one partition), all with `message.timestamp.type=LogAppendTime`, which the indexer
  relies on, and `quotes.tradingview.dlq` (shared by the three streams), or brings existing ones in
  line — partitions can only grow — and logs what changed.
- **es_template**: the composable index templates `quotes` for `quotes-*`, `bars` for `bars-*` and `gaps`
  for `gaps-*` (`dynamic: strict`, doubles, keywords, `@timestamp`, `kafka.*`; core features only).
- **kibana_objects**: through the `kibana_default` connection, waits for Kibana, creates or updates the
  data view `quotes-*` and imports `kibana/*.ndjson` with overwrite. Without that connection it logs
  that Kibana was skipped and succeeds.

A second run changes nothing and says so in each task's log and return value.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from _shared.connections import connection_info
from _shared.params import dlq_topic_param, stream_params, topic_param
from _shared.tasks import config_errors_fail, pipeline
from airflow.sdk import Param, dag, task

from quoteflow.settings import KIBANA_CONN_ID


@dag(
    dag_id="quotes_setup",
    schedule=None,
    start_date=datetime(2026, 11, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["quoteflow", "setup"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=15)},
    params={
        "partitions": Param(
            3,
            type="integer",
            minimum=1,
            maximum=256,
            title="Partitions",
            description="Partitions of the quotes, bars and dead-letter topics (can only grow).",
        ),
        "retention_hours": Param(
            72,
            type="number",
            minimum=1,
            title="Quotes retention (hours)",
            description="How long Kafka keeps quotes, bars and gaps: the horizon for re-runs and backfills.",
        ),
        "dlq_retention_days": Param(
            30,
            type="number",
            minimum=1,
            title="Dead-letter retention (days)",
            description="How long dead letters stay available for inspection and replay.",
        ),
        "replication_factor": Param(
            1,
            type="integer",
            minimum=1,
            title="Replication factor",
            description="For new topics only; 1 on a single local broker.",
        ),
        "topic": topic_param(),
        "dlq_topic": dlq_topic_param(),
        **stream_params(index_prefixes=False),
        "kibana_timeout_s": Param(
            180,
            type="number",
            minimum=1,
            title="Kibana wait (s)",
            description="How long to wait for Kibana to report itself available.",
        ),
    },
)
def quotes_setup():
    @task
    def kafka_topics(params=None) -> dict:
        """Create or align the quotes, bars, gaps and dead-letter topics."""
        from quoteflow import jobs

        with config_errors_fail():
            settings = jobs.TopicSettings(
                params["partitions"],
                params["retention_hours"],
                params["dlq_retention_days"],
                params["replication_factor"],
            )
            return jobs.setup_topics(pipeline(params, elasticsearch=False), settings)

    @task
    def es_template() -> str:
        """Create or update the `quotes`, `bars` and `gaps` index templates."""
        from quoteflow import jobs

        with config_errors_fail():
            return jobs.setup_template(pipeline({}, kafka=False))

    @task
    def kibana_objects(params=None) -> dict:
        """Data view and saved objects in Kibana, or a logged skip without `kibana_default`."""
        from quoteflow import jobs

        with config_errors_fail():
            return jobs.setup_kibana(connection_info(KIBANA_CONN_ID, required=False), float(params["kibana_timeout_s"]))

    kafka_topics() >> es_template() >> kibana_objects()


quotes_setup()
