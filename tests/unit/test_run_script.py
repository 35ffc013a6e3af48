"""scripts/run without Airflow: private files, stale PID files, `--logs`, and the checks the e2e tier relies on.

The listener and leftover checks of tests/helpers/processes.py are proved here against planted
processes: a child bound to 0.0.0.0, and leftovers that hide behind a renamed command line.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import procs
from tests.helpers.processes import RunProcesses, non_loopback_listeners, read_until

ROOT = Path(__file__).resolve().parents[2]
RUN_SCRIPT = ROOT / "scripts" / "run"

LISTENER = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.bind((sys.argv[1], 0))
s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts; all killed afterwards, whatever the test did."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _listener(children: list[subprocess.Popen], host: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", LISTENER, host], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    children.append(proc)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def _sleeper(children: list[subprocess.Popen], **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL, **kwargs)
    children.append(proc)
    return proc


def _load_run_script(run_dir: Path):
    """scripts/run as a module, its run folder at ``run_dir`` (read when the module loads)."""
    os.environ["QUOTEFLOW_RUN_DIR"] = str(run_dir)
    try:
        loader = importlib.machinery.SourceFileLoader("quoteflow_run_script", str(RUN_SCRIPT))
        spec = importlib.util.spec_from_loader(loader.name, loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        return module
    finally:
        del os.environ["QUOTEFLOW_RUN_DIR"]


def _run_env(run_dir: Path) -> dict[str, str]:
    return {**os.environ, "QUOTEFLOW_RUN_DIR": str(run_dir)}


# ---------------------------------------------------------------- listeners


def test_the_listener_check_catches_a_socket_bound_to_every_address(children) -> None:
    wildcard, port = _listener(children, "0.0.0.0")
    loopback, _ = _listener(children, "127.0.0.1")
    loopback6, _ = _listener(children, "::1")

    found = non_loopback_listeners([wildcard.pid, loopback.pid, loopback6.pid])

    assert found == [found[0]] and f"listens on 0.0.0.0:{port}" in found[0], found
    assert str(wildcard.pid) in found[0]


def test_listener_lines_of_proc_net_tcp_are_decoded() -> None:
    # Lines as the kernel writes them (header, then sl local rem st tx:rx tr:when retrnsmt uid timeout inode).
    tcp = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1\n"
        "   1: 00000000:2242 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1\n"
        "   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 333 1\n"
    )
    tcp6 = (
        "  sl  local_address                         remote_address                        st tx_queue rx_queue\n"
        "   0: 00000000000000000000000001000000:2242 00000000000000000000000000000000:0000 0A 0:0 0:0 0 0 0 444 1\n"
        "   1: 00000000000000000000000000000000:2242 00000000000000000000000000000000:0000 0A 0:0 0:0 0 0 0 555 1\n"
        "   2: 0000000000000000FFFF00000100007F:2242 00000000000000000000000000000000:0000 0A 0:0 0:0 0 0 0 666 1\n"
    )
    assert procs.parse_listeners(tcp) == {111: ("127.0.0.1", 8080), 222: ("0.0.0.0", 8770)}
    assert procs.parse_listeners(tcp6) == {444: ("::1", 8770), 555: ("::", 8770), 666: ("::ffff:127.0.0.1", 8770)}
    assert [procs.is_loopback(a) for a in ("127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1")] == [True] * 4
    assert [procs.is_loopback(a) for a in ("0.0.0.0", "::", "10.0.0.1", "::ffff:10.0.0.1")] == [False] * 4


# ---------------------------------------------------------------- leftovers


def test_the_leftover_check_finds_processes_that_hide_their_name(tmp_path: Path, children) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    watch = RunProcesses(run_dir)

    # Named like Airflow's renamed workers: a scan of command lines for "python" misses all of these.
    in_cwd = subprocess.Popen(["bash", "-c", 'exec -a "airflow worker -- x" sleep 300'], cwd=run_dir)
    children.append(in_cwd)
    with open(run_dir / "logs" / "worker.log", "ab") as log:
        holds_log = _sleeper(children, cwd=outside, stdout=log)
    marked = _sleeper(children, cwd=outside, env={**os.environ, "QUOTEFLOW_RUN_SPAWNED": str(run_dir)})
    recorded = _sleeper(children, cwd=outside)
    procs.write_pid_file(run_dir / "scheduler.pid", recorded.pid)
    unrelated = _sleeper(children, cwd=outside)
    deadline = time.monotonic() + 10
    while b"airflow worker" not in Path(f"/proc/{in_cwd.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)  # bash has not exec'ed into sleep yet
    watch.remember()
    (run_dir / "scheduler.pid").unlink()  # as `make stop` does: the check must not go blind

    report = "\n".join(watch.leftovers())

    assert f"{in_cwd.pid} (airflow worker -- x 300): its working directory is in the run folder" in report, report
    assert f"{holds_log.pid} (sleep 300): it holds {run_dir}/logs/worker.log open" in report, report
    assert f"{marked.pid} (sleep 300): its environment has QUOTEFLOW_RUN_SPAWNED={run_dir}" in report, report
    assert f"{recorded.pid} (sleep 300): it was recorded" in report, report
    assert str(unrelated.pid) not in report

    for proc in (in_cwd, holds_log, marked, recorded):
        proc.kill()
        proc.wait(timeout=10)
    assert watch.leftovers() == []


# ---------------------------------------------------------------- stale PID files


def test_stop_never_signals_a_process_a_stale_pid_file_names(tmp_path: Path, children) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # Live processes scripts/run did not start, each leading its own group (a group kill would reach it).
    stranger = _sleeper(children, start_new_session=True)
    old_style = _sleeper(children, start_new_session=True)
    ours = _sleeper(children, start_new_session=True)
    started = procs.start_time(stranger.pid)
    assert started is not None
    (run_dir / "scheduler.pid").write_text(f"{stranger.pid} {started + 1}\n")  # PID reused since it was written
    (run_dir / "feed.pid").write_text(f"{old_style.pid}\n")  # no start time: cannot be trusted
    procs.write_pid_file(run_dir / "api-server.pid", ours.pid)  # the control: a true record is stopped
    # An orphan of a killed scheduler (a task process, reparented): no PID file leads to it, its marker does.
    orphan_env = {**os.environ, "QUOTEFLOW_RUN_SPAWNED": str(run_dir), "QUOTEFLOW_RUN_COMPONENT": "scheduler"}
    orphan = _sleeper(children, start_new_session=True, env=orphan_env)

    stop = subprocess.run(
        [str(RUN_SCRIPT), "--stop"], env=_run_env(run_dir), capture_output=True, text=True, timeout=120
    )

    assert stop.returncode == 0, stop.stderr
    assert ours.wait(timeout=5) == -signal.SIGTERM
    assert orphan.wait(timeout=5) == -signal.SIGTERM
    assert stranger.poll() is None and old_style.poll() is None, stop.stdout
    assert not list(run_dir.glob("*.pid")), "make stop leaves no PID file behind"


# ---------------------------------------------------------------- files


def test_the_run_folder_and_its_secrets_are_private_from_creation(tmp_path: Path) -> None:
    run = _load_run_script(tmp_path / "run")
    old_umask = os.umask(0)  # a file created with the default mode would be world-readable now
    try:
        password = run.admin_password()
        run.write_private(run.AIRFLOW_HOME / "passwords.json", '{"admin": "x"}')
    finally:
        os.umask(old_umask)

    assert len(password) >= 16
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "run" / "admin-password").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "run" / "airflow" / "passwords.json").stat().st_mode & 0o777 == 0o600
    assert run.admin_password() == password, "the password is generated once"


def test_airflow_is_sized_for_the_pipeline_and_each_size_yields_to_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("AIRFLOW__CORE__PARALLELISM", "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES", "AIRFLOW__API__WORKERS"):
        monkeypatch.delenv(key, raising=False)
    run = _load_run_script(tmp_path / "run")
    env = run.airflow_env(replay=True)
    # LocalExecutor forks [core] parallelism workers at start: Airflow's default 32 took 0.9 GB PSS.
    assert env["AIRFLOW__CORE__PARALLELISM"] == "4"
    assert env["AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES"] == "1"
    assert env["AIRFLOW__API__WORKERS"] == "1"

    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "32")  # how bench/footprint.py measures the old size
    monkeypatch.setenv("QUOTEFLOW_WINDOW_SECONDS", "10")
    env = run.airflow_env(replay=True)
    assert env["AIRFLOW__CORE__PARALLELISM"] == "32"
    assert env["QUOTEFLOW_WINDOW_SECONDS"] == "10", "the window setting reaches the DAG processor and the tasks"


def test_the_services_make_run_starts_get_small_heaps_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("QUOTEFLOW_KAFKA_HEAP", "QUOTEFLOW_ES_HEAP"):
        monkeypatch.delenv(key, raising=False)
    run = _load_run_script(tmp_path / "run")
    env = run.service_env()
    assert (env["QUOTEFLOW_KAFKA_HEAP"], env["QUOTEFLOW_ES_HEAP"]) == ("256m", "512m")
    monkeypatch.setenv("QUOTEFLOW_ES_HEAP", "1g")
    assert run.service_env()["QUOTEFLOW_ES_HEAP"] == "1g"


# ---------------------------------------------------------------- status, logs


def test_status_without_a_run_says_what_is_not_running(tmp_path: Path) -> None:
    status = subprocess.run(
        [str(RUN_SCRIPT), "--status"], env=_run_env(tmp_path / "run"), capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 1
    assert "Traceback" not in status.stdout + status.stderr
    for name in ("api-server", "dag-processor", "triggerer", "scheduler"):
        assert f"{name}: not running" in status.stdout


def test_logs_prints_the_tail_then_follows(tmp_path: Path, children) -> None:
    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    (logs / "scheduler.log").write_text("".join(f"scheduler line {i}\n" for i in range(100)))
    (logs / "feed.log").write_text("feed started\n")
    follow = subprocess.Popen(
        [str(RUN_SCRIPT), "--logs"], env=_run_env(tmp_path / "run"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    children.append(follow)

    tail = read_until(follow, "scheduler line 99", timeout=20)
    assert "feed started" in tail and "scheduler line 60\n" in tail
    assert "scheduler line 59\n" not in tail, "only the tail of each log"

    time.sleep(1.5)
    assert follow.poll() is None, "--logs keeps following"
    with open(logs / "feed.log", "a") as log:
        log.write("a line written later\n")
    read_until(follow, "a line written later", timeout=20)
