"""The live view's health lists the running producer run's shards: one per task instance of ``produce_quotes``.

Runs, task instances and XComs are written into Airflow's metadata database as the scheduler and the
tasks would (a run newer than any real one), then read back through ``/quotes-view/api/health``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.integration.test_liveview_api import client, pipeline_data  # noqa: F401 - fixtures

STATS_0 = {"shard": "0", "symbols": 2, "quotes": 120, "bars": 14, "gaps": 0, "reconnects": 0}
SUMMARY_2 = {"shard": "2", "symbols": 1, "quotes": 40, "bars": 3, "gaps": 1, "reconnects": 2}


def _producer_run(tis: list[tuple[str, int, str, int, dict[str, Any] | list | None, str]], days: int) -> Iterator[str]:
    """A running quotes_producer run ``days`` ahead, with task instances ``(task, map, state, try, xcom, key)``."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunType
    from sqlalchemy import delete, insert

    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)
    run_id = f"manual__liveview-shards-{uuid.uuid4().hex[:8]}"
    run = DagRun(
        dag_id="quotes_producer",
        run_id=run_id,
        run_type=DagRunType.MANUAL,
        state=DagRunState.RUNNING,
        logical_date=start,
        data_interval=(start, start),
        run_after=start,
        start_date=start,
    )
    with create_session() as session:
        session.add(run)
        session.flush()
        for task_id, map_index, state, try_number, _, _ in tis:
            session.execute(
                insert(TaskInstance.__table__).values(
                    id=uuid.uuid4(),
                    task_id=task_id,
                    dag_id="quotes_producer",
                    run_id=run_id,
                    map_index=map_index,
                    state=state,
                    try_number=try_number,
                    max_tries=3,
                    pool="default_pool",
                    pool_slots=1,
                )
            )
        for i, (task_id, map_index, _, _, value, key) in enumerate(tis):
            if value is not None:
                session.execute(
                    insert(XComModel.__table__).values(
                        dag_run_id=run.id,
                        task_id=task_id,
                        map_index=map_index,
                        key=key,
                        dag_id="quotes_producer",
                        run_id=run_id,
                        value=value,
                        timestamp=start + timedelta(seconds=i),
                    )
                )
    yield run_id
    with create_session() as session:
        session.execute(delete(XComModel).where(XComModel.run_id == run_id))
        session.execute(delete(TaskInstance).where(TaskInstance.run_id == run_id))
        session.execute(delete(DagRun).where(DagRun.run_id == run_id))


@pytest.fixture
def sharded_run(airflow_db) -> Iterator[str]:
    yield from _producer_run(
        [
            ("plan_shards", -1, "success", 1, [{"shard": "0"}, {"shard": "1"}, {"shard": "2"}], "return_value"),
            ("produce_quotes", 0, "running", 1, STATS_0, "stats"),
            ("produce_quotes", 1, "up_for_retry", 2, None, ""),
            ("produce_quotes", 2, "success", 1, SUMMARY_2, "return_value"),
        ],
        days=400,
    )


@pytest.fixture
def unsharded_run(airflow_db) -> Iterator[str]:
    yield from _producer_run([("produce_quotes", -1, "running", 3, None, "")], days=401)


def _health(client_and_token) -> dict[str, Any]:
    test_client, token = client_and_token
    resp = test_client.get("/quotes-view/api/health", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    return resp.json()["airflow"]


def test_health_shows_each_shard_with_state_try_and_its_last_stats(client, pipeline_data, sharded_run) -> None:  # noqa: F811
    producer = _health(client)["producer"]
    assert producer["run_id"] == sharded_run and producer["state"] == "running"
    shards = [{k: s[k] for k in ("shard", "map_index", "state", "try_number", "stats")} for s in producer["shards"]]
    assert shards == [
        {"shard": "0", "map_index": 0, "state": "running", "try_number": 1, "stats": STATS_0 | {"from": "stats"}},
        {"shard": "1", "map_index": 1, "state": "up_for_retry", "try_number": 2, "stats": None},
        {
            "shard": "2",
            "map_index": 2,
            "state": "success",
            "try_number": 1,
            "stats": SUMMARY_2 | {"from": "return_value"},
        },
    ]


def test_an_unsharded_producer_is_one_shard_0(client, pipeline_data, unsharded_run) -> None:  # noqa: F811
    producer = _health(client)["producer"]
    assert producer["run_id"] == unsharded_run
    assert [(s["shard"], s["map_index"], s["state"], s["try_number"]) for s in producer["shards"]] == [
        ("0", -1, "running", 3)
    ]
