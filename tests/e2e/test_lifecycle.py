"""`make run` after a crash, and a feed server that cannot start: never two copies, never a record of a dead process.

The crash test runs its own `make run SOURCE=replay` in its own folder on its own ports. The file
is named to sort before test_pipeline.py, so it is over before the package's `pipeline` starts
and the two Airflows do not share the machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from scripts import procs
from tests.e2e.conftest import ROOT, START_TIMEOUT, log_tails, make_stop_leaves_nothing, run_env
from tests.helpers.processes import RunProcesses, non_loopback_listeners, process_tree
from tests.helpers.waiting import wait_until

AIRFLOW_COMPONENTS = ("api-server", "dag-processor", "triggerer", "scheduler")
RUN_SCRIPT = ROOT / "scripts" / "run"


def _env(run_dir: Path) -> dict[str, str]:
    return run_env(
        run_dir,
        os.environ.get("QUOTEFLOW_E2E_LIFECYCLE_AIRFLOW_PORT", "28180"),
        os.environ.get("QUOTEFLOW_E2E_LIFECYCLE_FEED_PORT", "28865"),
        os.environ.get("QUOTEFLOW_E2E_LIFECYCLE_HEALTH_PORT", "28975"),
    )


def _make_run(env: dict[str, str], run_dir: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["make", "run", "SOURCE=replay"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=START_TIMEOUT + 120
    )
    assert proc.returncode == 0, f"make run failed:\n{proc.stdout}\n{proc.stderr}\n{log_tails(run_dir)}"
    return proc


def _kill_airflow_tree(run_dir: Path) -> list[int]:
    """kill -9 every Airflow component and everything below it, as a crash would; the feed server is spared."""
    roots = [procs.read_pid_file(run_dir / f"{name}.pid") for name in AIRFLOW_COMPONENTS]
    assert all(roots), f"not every Airflow component is recorded: {dict(zip(AIRFLOW_COMPONENTS, roots, strict=True))}"
    killed: set[int] = set()
    while any(procs.alive(r) for r in roots if r):
        for pid in {p for r in roots if r for p in (r, *procs.descendants(r))}:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    return sorted(killed)


def test_make_run_after_airflow_was_killed_adopts_the_feed_and_make_stop_leaves_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = _env(run_dir)
    watch = RunProcesses(run_dir)
    try:
        _make_run(env, run_dir)
        watch.remember()
        feed = procs.read_pid_file(run_dir / "feed.pid")
        assert feed is not None
        killed = _kill_airflow_tree(run_dir)
        print(f"killed {len(killed)} Airflow processes; the feed server {feed} lives on")
        assert procs.alive(feed)

        again = _make_run(env, run_dir)
        print(again.stdout[-2000:])

        assert procs.read_pid_file(run_dir / "feed.pid") == feed, "the surviving feed server is adopted, not doubled"
        assert f"(pid {feed})" in again.stdout and "adopted" in again.stdout
        for pid_file in run_dir.glob("*.pid"):
            assert procs.read_pid_file(pid_file) is not None, f"{pid_file.name} records a process that is not running"
        servers = [p for p in process_tree(run_dir) if b"serve-feed" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert servers == [feed], f"one feed server, the adopted one: {servers}"
        status = subprocess.run(["make", "status"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "airflow: healthy" in status.stdout
        assert non_loopback_listeners(process_tree(run_dir)) == []
        watch.remember()
    finally:
        make_stop_leaves_nothing(env, watch)


def test_a_feed_server_that_cannot_start_is_not_recorded(tmp_path: Path) -> None:
    """The port taken by someone else, or a feed that exits at once: `make run` says so and records nothing."""
    run_dir = tmp_path / "run"
    env = _env(run_dir)
    watch = RunProcesses(run_dir)
    squatter = socket.socket()
    # An earlier test's feed server may have left the port in TIME_WAIT; that is not "taken".
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        squatter.bind(("127.0.0.1", int(env["QUOTEFLOW_FEED_PORT"])))
        squatter.listen()
        taken = subprocess.run(
            [str(RUN_SCRIPT), "--source", "replay"], env=env, capture_output=True, text=True, timeout=300
        )
        squatter.close()
        broken = subprocess.run(
            [str(RUN_SCRIPT), "--replay-file", str(tmp_path / "no-such-frames.jsonl")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

        assert taken.returncode == 1
        assert f"port {env['QUOTEFLOW_FEED_PORT']}" in taken.stderr and "QUOTEFLOW_FEED_PORT" in taken.stderr
        assert broken.returncode == 1
        assert "feed server exited" in broken.stderr and "feed.log" in broken.stderr, broken.stderr
        assert not list(run_dir.glob("*.pid")), [p.name for p in run_dir.glob("*.pid")]
        wait_until("the failed feed server gone", lambda: not watch.leftovers(), 10, interval=0.5)
    finally:
        squatter.close()
        make_stop_leaves_nothing(env, watch)
