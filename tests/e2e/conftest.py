"""The e2e fixture: the whole pipeline through `make run SOURCE=replay`, from a fresh run-state folder.

Kafka and Elasticsearch are the suite's own (already up); everything `make run` starts —
the feed server and Airflow's four components — lives in a temporary folder on spare ports, and
`make stop` must leave none of it running: no process descended from one it recorded, none working
in or holding a file of the run folder, none carrying the folder in its environment
(tests/helpers/processes.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.processes import RunProcesses

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
    run_output: str = ""

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


def run_env(run_dir: Path, airflow_port: str, feed_port: str, health_port: str) -> dict[str, str]:
    """The environment of a `make run` in ``run_dir`` on these ports, without the suite's own Airflow settings."""
    env = {
        **os.environ,
        "QUOTEFLOW_RUN_DIR": str(run_dir),
        "QUOTEFLOW_AIRFLOW_PORT": airflow_port,
        "QUOTEFLOW_FEED_PORT": feed_port,
        "QUOTEFLOW_SCHEDULER_HEALTH_PORT": health_port,
        "QUOTEFLOW_RUN_TIMEOUT": str(START_TIMEOUT),
    }
    for key in list(env):
        if key.startswith(("AIRFLOW__", "AIRFLOW_CONN_")) or key == "AIRFLOW_HOME":
            env.pop(key)
    return env


def log_tails(run_dir: Path, lines: int = 30) -> str:
    """The last lines of each component's log in ``run_dir``, for a failure message."""
    parts = []
    for log in sorted((run_dir / "logs").glob("*.log")):
        parts.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
    return "\n".join(parts)


def make_stop_leaves_nothing(env: dict[str, str], watch: RunProcesses) -> None:
    """`make stop`, then fail if it failed or if any process of the run is left (PIDs noted before the stop)."""
    watch.remember()
    stop = subprocess.run(["make", "stop"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert stop.returncode == 0, f"make stop failed:\n{stop.stdout}\n{stop.stderr}"
    leftovers = watch.leftovers()
    assert not leftovers, "make stop left processes running:\n" + "\n".join(leftovers) + f"\n{stop.stdout}"


@contextmanager
def make_run(
    kafka_bootstrap: str,
    es_url: str,
    run_dir: Path,
    env: dict[str, str],
    alongside: Callable[[], AbstractContextManager[object]] | None = None,
) -> Iterator[Pipeline]:
    """`make run SOURCE=replay` with ``env`` in ``run_dir``; `make stop` afterwards, which must leave nothing running.

    ``alongside`` (e.g. the Celery workers of tests/e2e/test_celery_workers.py) is entered as soon as
    `make run` is launched, because its start-up may need it, and exited before `make stop`.
    """
    watch = RunProcesses(run_dir)
    start_offsets = _end_offsets(kafka_bootstrap, QUOTES_TOPIC)
    with ExitStack() as companions:
        started = time.time()
        proc = subprocess.Popen(
            ["make", "run", "SOURCE=replay"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            if alongside is not None:
                companions.enter_context(alongside())
            stdout, stderr = proc.communicate(timeout=START_TIMEOUT + 120)
        except BaseException:
            proc.kill()
            proc.communicate()
            companions.close()
            make_stop_leaves_nothing(env, watch)
            raise
        start_seconds = time.time() - started
        print(stdout[-3000:])
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
            run_output=stdout,
        )
        try:
            if proc.returncode != 0:
                pytest.fail(
                    f"make run SOURCE=replay failed ({proc.returncode}):\n{stdout}\n{stderr}\n" + log_tails(run_dir)
                )
            watch.remember()
            yield pipe
        finally:
            companions.close()
            make_stop_leaves_nothing(env, watch)


@pytest.fixture(scope="package")  # torn down after the last e2e test, before the other tiers run
def pipeline(kafka_bootstrap: str, es_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """`make run SOURCE=replay` in a fresh run folder; `make stop` afterwards, which must leave nothing running."""
    run_dir = tmp_path_factory.mktemp("make-run")
    env = run_env(
        run_dir,
        os.environ.get("QUOTEFLOW_E2E_AIRFLOW_PORT", "28080"),
        os.environ.get("QUOTEFLOW_E2E_FEED_PORT", "28765"),
        os.environ.get("QUOTEFLOW_E2E_HEALTH_PORT", "28974"),
    )
    with make_run(kafka_bootstrap, es_url, run_dir, env) as pipe:
        yield pipe
