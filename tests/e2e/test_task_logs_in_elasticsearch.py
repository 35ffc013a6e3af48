"""`make run`: Airflow task logs land in Elasticsearch through the provider's task handler, and read back.

Each finished task's log is bulk-written to the ``airflow-logs`` index by ``ElasticsearchRemoteLogIO``
(config/quoteflow_logging.py), one document per line, keyed by ``log_id``; the REST log endpoint (what
the UI shows) reads it back from there. The pipeline's own lines (the indexer's window summary, the
setup's topic lines) are what is looked for.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from typing import Any

from elasticsearch import Elasticsearch

from tests.helpers.e2e import airflow_write
from tests.helpers.waiting import wait_until

TASK_LOG_INDEX = "airflow-logs"
LOG_ID_TEMPLATE = "{dag_id}-{task_id}-{run_id}-{map_index}-{try_number}"  # [elasticsearch] log_id_template default
DEADLINE = 420


def log_id(ti: dict[str, Any]) -> str:
    return LOG_ID_TEMPLATE.format(
        dag_id=ti["dag_id"], task_id=ti["task_id"], run_id=ti["dag_run_id"], map_index=ti["map_index"],
        try_number=ti["try_number"],
    )  # fmt: skip


def es_lines(es: Elasticsearch, ident: str) -> list[dict[str, Any]]:
    """The documents of ``log_id`` ``ident`` in the task-log index, in line order."""
    if not es.indices.exists(index=TASK_LOG_INDEX):
        return []
    es.indices.refresh(index=TASK_LOG_INDEX)
    resp = es.search(
        index=TASK_LOG_INDEX, query={"match_phrase": {"log_id": ident}}, sort=["offset"], size=1000
    )  # fmt: skip
    return [hit["_source"] for hit in resp["hits"]["hits"] if hit["_source"].get("log_id") == ident]


def rest_log(pipeline, ti: dict[str, Any]) -> list[dict[str, Any]]:
    """The task instance's log as the REST endpoint (and so the UI) returns it."""
    run = urllib.parse.quote(ti["dag_run_id"], safe="")
    path = (
        f"/api/v2/dags/{ti['dag_id']}/dagRuns/{run}/taskInstances/{ti['task_id']}/logs/{ti['try_number']}"
        f"?full_content=true&map_index={ti['map_index']}"
    )
    req = urllib.request.Request(
        f"{pipeline.airflow_url}{path}",
        headers={"Authorization": f"Bearer {pipeline.token()}", "Accept": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)["content"]


def finished_tis(pipeline, dag_id: str) -> list[dict[str, Any]]:
    runs = pipeline.api(f"/api/v2/dags/{dag_id}/dagRuns?state=success&order_by=-run_after&limit=5")["dag_runs"]
    tis: list[dict[str, Any]] = []
    for run in runs:
        run_id = urllib.parse.quote(run["dag_run_id"], safe="")
        found = pipeline.api(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
        tis += [ti for ti in found if ti["state"] == "success"]
    return tis


def find_line(pipeline, es: Elasticsearch, dag_id: str, needle: str) -> tuple[dict, list[dict]] | None:
    """A finished task instance of ``dag_id`` whose log in ES has a line containing ``needle``."""
    for ti in finished_tis(pipeline, dag_id):
        lines = es_lines(es, log_id(ti))
        if any(needle in str(line.get("event", "")) for line in lines):
            return ti, lines
    return None


def test_task_logs_are_found_in_elasticsearch_by_log_id_and_read_back_by_the_api(pipeline) -> None:
    es = Elasticsearch(pipeline.es_url, request_timeout=30)
    started = time.monotonic()
    checks = {
        "quotes_setup": "topic quotes.tradingview",  # the setup's topic line (created / aligned / as wanted)
        "quotes_indexer": "window [",  # the indexer's one summary line per window
    }
    for dag_id, needle in checks.items():
        ti, lines = wait_until(
            f"a {dag_id} task log in {TASK_LOG_INDEX} with a line containing {needle!r}",
            lambda dag_id=dag_id, needle=needle: find_line(pipeline, es, dag_id, needle),
            DEADLINE,
            interval=5,
        )
        print(f"{dag_id}.{ti['task_id']}: {len(lines)} lines in ES after {time.monotonic() - started:.0f} s")
        ours = [line for line in lines if needle in str(line.get("event", ""))]
        assert ours[0]["logger"].startswith("quoteflow."), ours[0]
        assert [line["offset"] for line in lines] == list(range(1, len(lines) + 1))  # every line, in order

        content = rest_log(pipeline, ti)
        events = [str(entry.get("event", "")) for entry in content]
        assert ours[0]["event"] in events, events[-20:]
        # The handler names its source: the Elasticsearch host, not a local file.
        sources = events[events.index("::group::Log message source details") + 1 : events.index("::endgroup::")]
        assert sources == [pipeline.es_url], sources


def test_a_running_tasks_log_is_read_from_its_local_file(pipeline) -> None:
    """Airflow 3 uploads a log when the task ends; until then the UI shows the local file, which is kept."""

    def running_producer() -> dict[str, Any] | None:
        runs = pipeline.api("/api/v2/dags/quotes_producer/dagRuns?state=running&limit=5")["dag_runs"]
        for run in runs:
            run_id = urllib.parse.quote(run["dag_run_id"], safe="")
            tis = pipeline.api(f"/api/v2/dags/quotes_producer/dagRuns/{run_id}/taskInstances")["task_instances"]
            for ti in tis:
                if ti["state"] == "running" and rest_log(pipeline, ti):
                    return ti
        return None

    ti = wait_until("a running quotes_producer task with a log", running_producer, DEADLINE, interval=5)
    events = [str(entry.get("event", "")) for entry in rest_log(pipeline, ti)]
    sources = events[events.index("::group::Log message source details") + 1 : events.index("::endgroup::")]
    # The local file (make run starts no log server, so the served-logs attempt beside it fails).
    local = str(pipeline.state_dir / "airflow" / "logs")
    assert any(source.startswith(local) and source.endswith(".log") for source in sources), sources
    assert pipeline.es_url not in sources, sources
    assert any(event and not event.startswith("::") for event in events[events.index("::endgroup::") :]), events


def test_the_kafka_connection_test_button_is_the_providers(pipeline) -> None:
    """Admin → Connections → Test (enabled by make run) runs the Kafka provider's test_connection on the API server."""
    extra = json.dumps({"bootstrap.servers": pipeline.kafka_bootstrap})
    body = {"connection_id": "kafka_default", "conn_type": "kafka", "extra": extra}
    assert airflow_write(pipeline, "POST", "/api/v2/connections/test", body) == {
        "status": True,
        "message": "Connection successful.",
    }
    dead = {**body, "extra": json.dumps({"bootstrap.servers": "127.0.0.1:1"})}
    assert airflow_write(pipeline, "POST", "/api/v2/connections/test", dead)["status"] is False
