"""The e2e fixture: the whole pipeline through `make run SOURCE=replay`, from a fresh run-state folder.

Kafka and Elasticsearch are the suite's own (already up); everything `make run` starts —
the feed server and Airflow standalone — lives in a temporary folder on spare ports, and
`make stop` must leave none of it running.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUOTES_TOPIC = "quotes.tradingview"
START_TIMEOUT = 600


@dataclass
class Pipeline:
    """Where the running pipeline is, and what the topic held before it started."""

    airflow_url: str
    username: str
    password: str
    es_url: str
    kafka_bootstrap: str
    topic: str
    state_dir: Path
    env: dict[str, str]
    start_offsets: dict[int, int] = field(default_factory=dict)
    started_at: float = 0.0
    start_seconds: float = 0.0

    def token(self) -> str:
        """A Bearer token for Airflow's REST API (admin)."""
        req = urllib.request.Request(
            f"{self.airflow_url}/auth/token",
            data=json.dumps({"username": self.username, "password": self.password}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=15) as resp:
            return json.load(resp)["access_token"]

    def api(self, path: str) -> dict:
        """GET an Airflow REST path (``/api/v2/...``) as admin."""
        req = urllib.request.Request(f"{self.airflow_url}{path}", headers={"Authorization": f"Bearer {self.token()}"})
        with urllib.request.urlopen(req, timeout=15) as resp:
            return json.load(resp)


def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "quoteflow-e2e-probe"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return {}
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in sorted(meta.partitions)
        }
    finally:
        consumer.close()


def _leftover_pids(run_dir: Path) -> list[int]:
    pids = []
    for pid_file in run_dir.glob("*.pid"):
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, 0)
            pids.append(pid)
        except (ValueError, ProcessLookupError, FileNotFoundError):
            continue
    return pids


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes()
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
        if text.encode() in environ and "python" in cmdline:
            found.append(f"{entry.name}: {cmdline[:120]}")
    return found


@pytest.fixture(scope="package")  # torn down after the last e2e test, before the other tiers run
def pipeline(kafka_bootstrap: str, es_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """`make run SOURCE=replay` in a fresh run folder; `make stop` afterwards, which must leave nothing running."""
    run_dir = tmp_path_factory.mktemp("make-run")
    env = {
        **os.environ,
        "QUOTEFLOW_RUN_DIR": str(run_dir),
        "QUOTEFLOW_AIRFLOW_PORT": os.environ.get("QUOTEFLOW_E2E_AIRFLOW_PORT", "28080"),
        "QUOTEFLOW_FEED_PORT": os.environ.get("QUOTEFLOW_E2E_FEED_PORT", "28765"),
        "QUOTEFLOW_RUN_TIMEOUT": str(START_TIMEOUT),
    }
    # The suite's own Airflow settings must not leak into the pipeline's Airflow.
    for key in list(env):
        if key.startswith(("AIRFLOW__", "AIRFLOW_CONN_")) or key == "AIRFLOW_HOME":
            env.pop(key)
    start_offsets = _end_offsets(kafka_bootstrap, QUOTES_TOPIC)
    started = time.time()
    proc = subprocess.run(
        ["make", "run", "SOURCE=replay"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=START_TIMEOUT + 120
    )
    start_seconds = time.time() - started
    print(proc.stdout[-3000:])
    pipe = Pipeline(
        airflow_url=f"http://127.0.0.1:{env['QUOTEFLOW_AIRFLOW_PORT']}",
        username="admin",
        password=(run_dir / "admin-password").read_text().strip() if (run_dir / "admin-password").exists() else "",
        es_url=es_url,
        kafka_bootstrap=kafka_bootstrap,
        topic=QUOTES_TOPIC,
        state_dir=run_dir,
        env=env,
        start_offsets=start_offsets,
        started_at=started,
        start_seconds=start_seconds,
    )
    try:
        if proc.returncode != 0:
            log = run_dir / "logs" / "airflow.log"
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:]) if log.exists() else ""
            pytest.fail(f"make run SOURCE=replay failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{tail}")
        yield pipe
    finally:
        stop = subprocess.run(["make", "stop"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        time.sleep(2)
        leftovers = _leftover_pids(run_dir) + _processes_mentioning(f"QUOTEFLOW_RUN_DIR={run_dir}")
        assert stop.returncode == 0, f"make stop failed:\n{stop.stdout}\n{stop.stderr}"
        assert not leftovers, f"make stop left processes running: {leftovers}"
