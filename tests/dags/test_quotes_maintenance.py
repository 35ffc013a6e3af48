"""quotes_maintenance: its Params, a dry run through dag.test(), and Airflow's db clean on a real metadata DB.

The metadata database is the session's SQLite one (a temporary AIRFLOW_HOME, migrated by the root
conftest). Runs, task instances and XComs are made by running the DAG itself; one run and some
audit-log rows are then dated 30 days back, and the clean must take exactly those. Airflow 3 cuts a
task process off the metadata database; the subprocess test applies the same block the task
supervisor applies and shows the clean still works through the ``airflow_metadata_db`` connection.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers.dags import load_dag, returns, task_states

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "quotes_maintenance"
TASKS = {"clean_metadata", "index_retention", "dlq_report"}


def test_params_are_typed_titled_described_and_the_schedule_daily() -> None:
    dag = load_dag(DAG_ID)
    assert set(dag.params) == {
        "keep_days",
        "retention_days",
        "dry_run",
        "prefer_ilm",
        "index_prefix",
        "bars_index_prefix",
        "gaps_index_prefix",
        "dlq_topic",
    }
    for name in dag.params:
        param = dag.params.get_param(name)
        assert param.schema.get("type") and param.schema.get("title") and param.description, (name, param.schema)
    assert dag.params["keep_days"] == 7 and dag.params["retention_days"] == 30 and dag.params["dry_run"] is False
    assert dag.params.get_param("retention_days").schema["minimum"] == 1
    assert dag.schedule == "@daily" and dag.catchup is False and {t.task_id for t in dag.tasks} == TASKS


def _backdate(run_id: str, days: int) -> None:
    """Date one run's dag_run, task_instance and xcom rows ``days`` back."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    then = datetime.now(UTC) - timedelta(days=days)
    with create_session() as session:
        session.query(DagRun).filter(DagRun.run_id == run_id).update({"start_date": then})
        session.query(TaskInstance).filter(TaskInstance.run_id == run_id).update({"start_date": then})
        session.query(XComModel).filter(XComModel.run_id == run_id).update({"timestamp": then})


def _log_rows(tag: str, days_back: list[int]) -> None:
    from airflow.models.log import Log
    from airflow.utils.session import create_session

    with create_session() as session:
        for days in days_back:
            row = Log(event=f"{tag}-{days}", dag_id=DAG_ID)
            row.dttm = datetime.now(UTC) - timedelta(days=days)
            session.add(row)


def _rows(run_ids: list[str], tag: str) -> dict[str, dict[str, int]]:
    """Per run: its dag_run, task_instance and xcom rows; and the tagged log rows per event."""
    from airflow.models.dagrun import DagRun
    from airflow.models.log import Log
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    out: dict[str, dict[str, int]] = {}
    with create_session() as session:
        for run_id in run_ids:
            out[run_id] = {
                "dag_run": session.query(DagRun).filter(DagRun.run_id == run_id).count(),
                "task_instance": session.query(TaskInstance).filter(TaskInstance.run_id == run_id).count(),
                "xcom": session.query(XComModel).filter(XComModel.run_id == run_id).count(),
            }
        logs = session.query(Log.event).filter(Log.event.like(f"{tag}-%")).all()
        out["log"] = {event: 1 for (event,) in logs}
    return out


BLOCKED = textwrap.dedent(
    """
    import json, sys
    from datetime import UTC, datetime
    import airflow.settings
    from airflow.sdk.execution_time.supervisor import block_orm_access

    block_orm_access()  # what the task supervisor does before any task code runs
    from airflow.utils.db_cleanup import run_cleanup
    try:
        run_cleanup(clean_before_timestamp=datetime.now(UTC), dry_run=True, confirm=False)
        blocked = "not blocked"
    except RuntimeError as exc:
        blocked = str(exc)
    from _shared.maintenance import db_clean
    from quoteflow.settings import ConfigError
    try:
        result = db_clean(7, True)
    except ConfigError as exc:
        result = {"error": str(exc)}
    print(json.dumps({"blocked": blocked, "result": result}))
    """
)


def _clean_in_a_blocked_task_process(db_path: Path, with_connection: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "dags"), str(ROOT / "include")])}
    env.pop("AIRFLOW_CONN_AIRFLOW_METADATA_DB", None)
    if with_connection:
        env["AIRFLOW_CONN_AIRFLOW_METADATA_DB"] = json.dumps({"conn_type": "sqlite", "host": str(db_path)})
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED], env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def names(es_client, make_topic):
    tag = uuid.uuid4().hex[:10]
    prefixes = {
        "index_prefix": f"quotes-test-{tag}-",
        "bars_index_prefix": f"bars-test-{tag}-",
        "gaps_index_prefix": f"gaps-test-{tag}-",
    }
    yield {**prefixes, "dlq_topic": make_topic(partitions=1)}
    for prefix in prefixes.values():
        es_client.options(ignore_status=404).indices.delete(index=f"{prefix}*", expand_wildcards="all")


def test_dry_run_changes_nothing_and_db_clean_takes_only_old_rows(airflow_db, es_client, names) -> None:
    from _shared.maintenance import db_clean

    old_index = f"{names['index_prefix']}{datetime.now(UTC) - timedelta(days=40):%Y.%m.%d}"
    es_client.indices.create(index=old_index, settings={"number_of_replicas": 0})
    dag = load_dag(DAG_ID)
    conf = {**names, "dry_run": True}
    old_run = dag.test(run_conf=conf)
    assert str(old_run.state) == "success", task_states(old_run)
    result = returns(old_run)
    assert set(result) == TASKS
    retention = result["index_retention"][0]
    assert retention["path"] == "delete" and retention["would_delete"] == [old_index] and retention["deleted"] == []
    assert es_client.indices.exists(index=old_index)  # the dry run deleted nothing
    assert result["dlq_report"][0]["dead_letters"] == 0
    assert result["clean_metadata"][0]["dry_run"] is True
    new_run = dag.test(run_conf=conf)
    assert str(new_run.state) == "success", task_states(new_run)

    tag = f"mtest-{uuid.uuid4().hex[:8]}"
    _backdate(old_run.run_id, days=30)
    _log_rows(tag, [30, 10, 1])
    runs = [old_run.run_id, new_run.run_id]
    before = _rows(runs, tag)
    assert before[old_run.run_id] == before[new_run.run_id]
    assert before[old_run.run_id]["dag_run"] == 1 and before[old_run.run_id]["task_instance"] == 3
    assert before[old_run.run_id]["xcom"] >= 3  # return_value, and one per key (a dict return: multiple_outputs)
    assert before["log"] == {f"{tag}-30": 1, f"{tag}-10": 1, f"{tag}-1": 1}

    dry = db_clean(7, True)
    assert dry["dry_run"] is True and dry["tables"]["dag_run"] >= 1 and dry["tables"]["log"] >= 2, dry
    assert dry["tables"]["task_instance"] >= 3 and dry["tables"]["xcom"] >= before[old_run.run_id]["xcom"], dry
    assert _rows(runs, tag) == before  # a dry run deletes nothing

    blocked = _clean_in_a_blocked_task_process(airflow_db / "airflow.db", with_connection=True)
    assert "Direct database access via the ORM is not allowed" in blocked["blocked"], blocked
    assert blocked["result"]["database"] == "airflow_metadata_db"
    assert blocked["result"]["tables"] == dry["tables"], blocked
    assert _rows(runs, tag) == before

    done = db_clean(7, False)
    assert done["deleted"] >= 1 + 3 + 3 + 2 and done["tables"]["dag_run"] >= 1, done
    after = _rows(runs, tag)
    assert after[old_run.run_id] == {"dag_run": 0, "task_instance": 0, "xcom": 0}
    assert after[new_run.run_id] == before[new_run.run_id]
    assert after["log"] == {f"{tag}-1": 1}

    refused = _clean_in_a_blocked_task_process(airflow_db / "airflow.db", with_connection=False)
    assert "airflow_metadata_db" in refused["result"]["error"], refused
    assert "AIRFLOW_CONN_AIRFLOW_METADATA_DB=" in refused["result"]["error"]

    with pytest.raises(Exception, match="keep_days must be a whole number of days >= 1"):
        db_clean(0, True)
