"""
### quotes_maintenance — keep Airflow's metadata, the indices and the dead letters in bounds (daily)

Three independent tasks:

- **clean_metadata**: `airflow db clean` (Airflow's own cleanup, no prompt, no archive tables) of
  DAG runs, task instances, XComs and log rows older than `keep_days`; each DAG's latest scheduled
  run is kept. Airflow 3 keeps tasks away from the metadata database, so a real run needs the
  Connection `airflow_metadata_db` (the SQLAlchemy dialect as its type, e.g. `postgresql+psycopg2`).
- **index_retention**: quotes indices (daily, `quotes-tradingview-YYYY.MM.DD`) and bars and gaps
  indices (monthly, `…-YYYY.MM`) whose whole day or month is older than `retention_days` are
  deleted; today's and the open month's never are. Where the cluster has ILM (and `prefer_ilm`),
  a delete-only lifecycle policy is attached instead and ILM deletes them; the result's `path`
  says which ran (`delete` or `ilm`).
- **dlq_report**: per dead-letter reason, the count and the oldest and newest letter's age in days,
  beside the dead-letter topic's retention.

`dry_run` changes nothing and lists what would be deleted.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from _shared.params import dlq_topic_param, index_prefix_param
from _shared.tasks import config_errors_fail, pipeline
from airflow.sdk import Param, dag, task

from quoteflow.settings import BARS_INDEX_PREFIX, GAPS_INDEX_PREFIX


def _days(default: int, title: str, description: str) -> Param:
    return Param(default, type="integer", minimum=1, title=title, description=description)


def _prefix(default: str, title: str, description: str) -> Param:
    return Param(default, type="string", minLength=1, title=title, description=description)


@dag(
    dag_id="quotes_maintenance",
    schedule="@daily",
    start_date=datetime(2026, 11, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["quoteflow", "maintenance"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    params={
        "keep_days": _days(7, "Keep metadata (days)", "Runs, task instances, XComs and log rows older go."),
        "retention_days": _days(
            30, "Keep indices (days)", "An index goes once its whole day (quotes) or month (bars, gaps) is older."
        ),
        "dry_run": Param(False, type="boolean", title="Dry run", description="Change nothing; list what would go."),
        "prefer_ilm": Param(
            True,
            type="boolean",
            title="Use ILM where available",
            description="On a cluster with ILM, attach a delete policy instead of deleting indices here.",
        ),
        "index_prefix": index_prefix_param(),
        "bars_index_prefix": _prefix(BARS_INDEX_PREFIX, "Bars index prefix", "Monthly bars indices <prefix>YYYY.MM."),
        "gaps_index_prefix": _prefix(GAPS_INDEX_PREFIX, "Gaps index prefix", "Monthly gaps indices <prefix>YYYY.MM."),
        "dlq_topic": dlq_topic_param(),
    },
)
def quotes_maintenance():
    @task
    def clean_metadata(params=None) -> dict:
        """Airflow's own db clean of old runs, task instances, XComs and logs."""
        from _shared.maintenance import db_clean

        with config_errors_fail():
            return db_clean(int(params["keep_days"]), bool(params["dry_run"]))

    @task
    def index_retention(params=None) -> dict:
        """Delete the indices past retention (or defer to ILM); the summary says which path ran."""
        from dataclasses import replace

        from quoteflow import jobs

        with config_errors_fail():
            p = replace(
                pipeline(params, kafka=False),
                bars_index_prefix=params["bars_index_prefix"],
                gaps_index_prefix=params["gaps_index_prefix"],
            )
            return jobs.retention(
                p,
                retention_days=int(params["retention_days"]),
                dry_run=bool(params["dry_run"]),
                prefer_ilm=bool(params["prefer_ilm"]),
            )

    @task
    def dlq_report(params=None) -> dict:
        """Dead letters per reason: count, oldest and newest age in days."""
        from quoteflow import jobs

        with config_errors_fail():
            return jobs.dlq_ages(pipeline(params, elasticsearch=False))

    clean_metadata()
    index_retention()
    dlq_report()


quotes_maintenance()
