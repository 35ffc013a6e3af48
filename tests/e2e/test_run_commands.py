"""The running `make run`: what it listens on, what it printed and wrote, and `make status` / `make logs` against it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

from tests.e2e.conftest import ROOT
from tests.helpers.processes import listener_table, non_loopback_listeners, process_tree, read_until
from tests.helpers.waiting import wait_until

COMPONENTS = ("feed", "api-server", "dag-processor", "triggerer", "scheduler")


def test_every_listener_of_make_run_is_on_loopback(pipeline) -> None:
    tree = process_tree(pipeline.state_dir)
    table = listener_table(tree)
    print(f"{len(tree)} processes; listeners:\n" + "\n".join(table))

    ports = {line.split()[0] for line in table}
    assert f"127.0.0.1:{pipeline.env['QUOTEFLOW_AIRFLOW_PORT']}" in ports, table
    assert f"127.0.0.1:{pipeline.env['QUOTEFLOW_FEED_PORT']}" in ports, table
    assert non_loopback_listeners(tree) == []


def test_make_run_prints_where_the_password_is_not_the_password(pipeline) -> None:
    assert pipeline.password and pipeline.password not in pipeline.run_output
    assert f"password in {pipeline.state_dir / 'admin-password'}" in pipeline.run_output
    assert pipeline.state_dir.stat().st_mode & 0o777 == 0o700
    for secret in (pipeline.state_dir / "admin-password", pipeline.state_dir / "airflow" / "passwords.json"):
        assert secret.stat().st_mode & 0o777 == 0o600, secret


def _status(pipeline) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "status"], cwd=ROOT, env=pipeline.env, capture_output=True, text=True, timeout=120)


def test_make_status_shows_each_component_and_the_last_indexer_window(pipeline) -> None:
    status = wait_until(
        "make status showing a finished indexer window",
        lambda: (lambda s: s if "last finished indexer window: [" in s.stdout else None)(_status(pipeline)),
        180,
        interval=10,
    )
    print(status.stdout)

    assert status.returncode == 0, status.stdout + status.stderr
    assert "Traceback" not in status.stdout + status.stderr
    for name in COMPONENTS:
        assert re.search(rf"^{name}: running \(pid \d+\)$", status.stdout, re.M), name
    assert "airflow: healthy" in status.stdout
    for dag_id in ("quotes_setup", "quotes_producer", "quotes_indexer", "quotes_reconcile"):
        assert re.search(rf"^  {dag_id}: (active|paused), (last run \S+ \w+|no runs yet)$", status.stdout, re.M), dag_id
    assert re.search(r"last finished indexer window: \[\S+, \S+\) (success|failed)", status.stdout)


def test_make_logs_prints_the_tail_then_follows(pipeline) -> None:
    follow = subprocess.Popen(
        ["make", "logs"],
        cwd=ROOT,
        env=pipeline.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # make and the tail it becomes: one group to end
    )
    try:
        seen = read_until(follow, "==> ", 30)
        time.sleep(1.5)
        assert follow.poll() is None, "make logs keeps following"
        marker = f"e2e marker line {time.time()}"
        with open(pipeline.state_dir / "logs" / "feed.log", "a") as log:
            log.write(marker + "\n")
        seen += read_until(follow, marker, 30)
        for name in COMPONENTS:
            assert f"==> {pipeline.state_dir / 'logs' / name}.log <==" in seen, name
    finally:
        os.killpg(follow.pid, signal.SIGTERM)
        follow.wait(timeout=10)
