"""The harness's own promises: a down service is named with how to start it, never a wall of errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST"))}
    env.update(overrides)
    return env


def test_status_names_each_down_service_and_how_to_start_it(tmp_path: Path) -> None:
    env = _env(
        QUOTEFLOW_KAFKA_PORT=str(_free_port()),
        QUOTEFLOW_ES_PORT=str(_free_port()),
        QUOTEFLOW_STATE_DIR=str(tmp_path),
    )
    proc = subprocess.run([str(ROOT / "scripts/services"), "status"], env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("kafka: down") and "make services" in lines[0]
    assert lines[1].startswith("elasticsearch: down") and "scripts/services up elasticsearch" in lines[1]


def test_up_refuses_a_port_held_by_something_that_is_not_kafka(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = _env(
            QUOTEFLOW_KAFKA_PORT=str(port),
            QUOTEFLOW_KAFKA_CONTROLLER_PORT=str(_free_port()),
            QUOTEFLOW_STATE_DIR=str(tmp_path),
        )
        proc = subprocess.run(
            [str(ROOT / "scripts/services"), "up", "kafka"], env=env, capture_output=True, text=True, timeout=60
        )
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is taken by a process this script did not start" in proc.stderr
    assert "QUOTEFLOW_KAFKA_PORT" in proc.stderr


def test_unknown_command_prints_usage() -> None:
    proc = subprocess.run([str(ROOT / "scripts/services"), "restart"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "scripts/services up [kafka|elasticsearch]" in proc.stderr


def test_integration_tests_stop_at_once_when_services_are_down(tmp_path: Path) -> None:
    env = _env(QUOTEFLOW_KAFKA_PORT=str(_free_port()), QUOTEFLOW_ES_PORT=str(_free_port()))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/integration/test_smoke.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out
    assert "Kafka is not answering at 127.0.0.1:" in out
    assert "Elasticsearch is not answering" in out
    assert "make services" in out
    assert "Traceback" not in out
