"""A stop request through Airflow itself: mark the running producer failed; it must flush and exit within 5 s.

This goes the real way — the API server answers the task's next heartbeat with 409, the
supervisor sends SIGTERM, Airflow's handler calls ``on_kill`` — and reads the task's own log.
Runs last among the e2e tests (file order), because it ends the current producer run.
"""

from __future__ import annotations

import ast
import json
import time
import urllib.request
from datetime import datetime

import pytest

TASK_ID = "produce_quotes"


def _patch(pipeline, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"{pipeline.airflow_url}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {pipeline.token()}"},
        method="PATCH",
    )
    with urllib.request.urlopen(req, timeout=15) as resp:
        return json.load(resp)


def _events(log_path) -> list[dict]:
    if not log_path.exists():
        return []
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def _running_producer(pipeline, timeout: float = 120) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = pipeline.api("/api/v2/dags/quotes_producer/dagRuns?state=running&limit=5")["dag_runs"]
        for run in runs:
            ti = pipeline.api(f"/api/v2/dags/quotes_producer/dagRuns/{run['dag_run_id']}/taskInstances/{TASK_ID}")
            if ti["state"] == "running":
                return run["dag_run_id"], ti["try_number"]
        time.sleep(2)
    pytest.fail("no running quotes_producer task instance to stop")


def test_marking_the_producer_failed_flushes_and_exits_within_5_s(pipeline) -> None:
    run_id, try_number = _running_producer(pipeline)
    log_path = (
        pipeline.state_dir
        / "airflow"
        / "logs"
        / "dag_id=quotes_producer"
        / f"run_id={run_id}"
        / f"task_id={TASK_ID}"
        / f"attempt={try_number}.log"
    )
    # Let it stream for a moment so there is something in flight to flush.
    deadline = time.monotonic() + 60
    while not any("stats:" in str(e.get("event")) for e in _events(log_path)) and time.monotonic() < deadline:
        time.sleep(2)

    _patch(pipeline, f"/api/v2/dags/quotes_producer/dagRuns/{run_id}/taskInstances/{TASK_ID}", {"new_state": "failed"})

    def stop_and_summary():
        events = _events(log_path)
        stop = next((e for e in events if "stop requested" in str(e.get("event"))), None)
        summary = next((e for e in events if str(e.get("event")).startswith("producer summary: ")), None)
        return (stop, summary) if stop and summary else None

    found = None
    deadline = time.monotonic() + 60
    while found is None and time.monotonic() < deadline:
        found = stop_and_summary()
        time.sleep(1)
    assert found, f"no 'stop requested' + 'producer summary' in {log_path}:\n" + "\n".join(
        str(e.get("event"))[:200] for e in _events(log_path)[-20:]
    )
    stop, summary_event = found
    took = (
        datetime.fromisoformat(summary_event["timestamp"].replace("Z", "+00:00"))
        - datetime.fromisoformat(stop["timestamp"].replace("Z", "+00:00"))
    ).total_seconds()
    summary = ast.literal_eval(summary_event["event"].removeprefix("producer summary: "))
    print(f"on_kill → summary in {took:.2f} s: {summary}")
    assert summary["stopped_by"] == "stop_request"
    assert summary["delivery_failures"] == 0
    assert summary["quotes"] == summary["quotes_sent"] > 0
    assert 0 <= took <= 5.0
