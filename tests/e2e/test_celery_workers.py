"""The pipeline on Airflow's CeleryExecutor: Redis as the broker, two Celery workers on this machine.

`make run SOURCE=replay` with ``QUOTEFLOW_EXECUTOR=CeleryExecutor`` (scripts/run) runs the scheduler,
API server, dag-processor and triggerer as usual; this test adds its own redis-server
(tests/helpers/redis.py) and two ``airflow celery worker`` processes with the scheduler's own
environment, each with its own identity (``[core] hostname_callable``). The indexer runs mapped
partition groups (``QUOTEFLOW_PARTITION_GROUPS=2``) and the producer is re-triggered with
``shard_size=1``, so the three default symbols make three mapped shards. Proven from the task
instances' ``hostname`` column (REST API): shards and index groups ran on both workers; and ES
holds exactly the Kafka records of the closed windows. The workers serve no logs (the API server
reads the task log files of this machine, or Elasticsearch) and listen on nothing.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from scripts import procs
from tests.e2e.conftest import Pipeline, make_run, run_env
from tests.helpers.e2e import airflow_write, epoch_ms, offsets_at
from tests.helpers.processes import non_loopback_listeners
from tests.helpers.redis import WORKER_VARIABLE, RedisServer, redis_server, worker_hostname
from tests.helpers.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ("w1", "w2")
LOG_PORTS = {"w1": "48793", "w2": "48794"}
CONCURRENCY = 4  # per worker: 3 long producer shards + the indexer's plan/groups/finish fit in 8 slots
SYMBOLS = ("BINANCE:SOLUSDT", "BINANCE:BTCUSDT", "BINANCE:ETHUSDT")
DEADLINE = 480
STOP_GRACE = 30.0


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def worker_env(scheduler_env: dict[str, str], name: str) -> dict[str, str]:
    """The scheduler's environment (what scripts/run gave it) plus this worker's identity and log port."""
    return {
        **scheduler_env,
        "QUOTEFLOW_RUN_COMPONENT": f"celery-{name}",
        WORKER_VARIABLE: name,
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.helpers.redis.worker_hostname",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(CONCURRENCY),
        # Not served (--skip-serve-logs: Airflow's log server binds every address), but never 8793.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": LOG_PORTS[name],
    }


@contextmanager
def celery_workers(run_dir: Path) -> Iterator[dict[str, subprocess.Popen]]:
    """Two Celery workers, started once `make run` has started the scheduler; stopped (with their tasks) after."""
    scheduler = wait_until(
        "make run's scheduler", lambda: procs.read_pid_file(run_dir / "scheduler.pid"), 300, interval=0.5
    )
    assert scheduler is not None
    base = _environ(scheduler)
    assert base.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor", "scripts/run did not pass QUOTEFLOW_EXECUTOR"
    airflow = str(ROOT / ".venv" / "bin" / "airflow")
    workers: dict[str, subprocess.Popen] = {}
    try:
        for name in WORKERS:
            with open(run_dir / "logs" / f"celery-{name}.log", "ab") as log:
                workers[name] = subprocess.Popen(
                    [airflow, "celery", "worker", "--concurrency", str(CONCURRENCY), "--skip-serve-logs"]
                    + ["--without-mingle", "--without-gossip", "--celery-hostname", f"{name}@%h"],
                    cwd=ROOT,
                    env=worker_env(base, name),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
        yield workers
    finally:
        for proc in workers.values():
            victims = procs.snapshot([proc.pid, *procs.descendants(proc.pid)])
            procs.terminate(victims, STOP_GRACE, group_leader=proc.pid)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("celery-broker")) as server:
        yield server


@pytest.fixture(scope="module")
def celery_pipeline(
    kafka_bootstrap: str, es_url: str, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    run_dir = tmp_path_factory.mktemp("make-run-celery")
    env = run_env(
        run_dir,
        os.environ.get("QUOTEFLOW_E2E_CELERY_AIRFLOW_PORT", "48080"),
        os.environ.get("QUOTEFLOW_E2E_CELERY_FEED_PORT", "48765"),
        os.environ.get("QUOTEFLOW_E2E_CELERY_HEALTH_PORT", "48974"),
    )
    env.update(
        QUOTEFLOW_EXECUTOR="CeleryExecutor",
        # The URL carries the password: Airflow reads it by running `cat` on the 0600 file.
        AIRFLOW__CELERY__BROKER_URL_CMD=f"cat {redis.url_file}",
        AIRFLOW__CELERY__RESULT_BACKEND_CMD=f"cat {redis.url_file}",
        QUOTEFLOW_PARTITION_GROUPS="2",
        # Room for three producer shards and the indexer's tasks at once (make run's default is 4).
        AIRFLOW__CORE__PARALLELISM="8",
    )
    with make_run(kafka_bootstrap, es_url, run_dir, env, alongside=lambda: celery_workers(run_dir)) as pipe:
        yield pipe


def _task_instances(pipeline: Pipeline, dag_id: str, run_id: str) -> list[dict]:
    return pipeline.api(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]


def _indexer_runs(pipeline: Pipeline, state: str) -> list[dict]:
    path = f"/api/v2/dags/quotes_indexer/dagRuns?state={state}&order_by=-run_after&limit=100"
    return pipeline.api(path)["dag_runs"]


def test_worker_hostname_needs_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORKER_VARIABLE, raising=False)
    with pytest.raises(RuntimeError, match=WORKER_VARIABLE):
        worker_hostname()
    monkeypatch.setenv(WORKER_VARIABLE, "w9")
    assert worker_hostname().endswith("-w9")


def test_make_run_refuses_an_executor_it_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_run_script import _load_run_script

    run = _load_run_script(tmp_path / "run")
    for key in ("AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__BROKER_URL_CMD", "AIRFLOW__CELERY__BROKER_URL_SECRET"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("QUOTEFLOW_EXECUTOR", raising=False)
    assert run.airflow_env(replay=True)["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    monkeypatch.setenv("QUOTEFLOW_EXECUTOR", "KubernetesExecutor")
    with pytest.raises(run.RunError, match="QUOTEFLOW_EXECUTOR='KubernetesExecutor'.*LocalExecutor, CeleryExecutor"):
        run.airflow_env(replay=True)
    monkeypatch.setenv("QUOTEFLOW_EXECUTOR", "CeleryExecutor")
    with pytest.raises(run.RunError, match="AIRFLOW__CELERY__BROKER_URL_CMD"):
        run.airflow_env(replay=True)
    monkeypatch.setenv("AIRFLOW__CELERY__BROKER_URL_CMD", "cat /nonexistent")
    assert run.airflow_env(replay=True)["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_make_run_asks_again_when_the_api_server_answers_too_late(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start-up read that times out (the API server stuck on the SQLite lock, seen here) is repeated; a POST not."""
    import http.server
    import threading

    from tests.unit.test_run_script import _load_run_script

    seen: list[str] = []

    class Slow(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(self.command)
            if len(seen) == 1:
                threading.Event().wait(1.5)  # longer than the client's timeout below (time.sleep is patched)
            self.send_response(200)
            self.send_header("Content-Length", "15")
            self.end_headers()
            self.wfile.write(b'{"state":"ok"} ')

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        run = _load_run_script(tmp_path / "run")
        monkeypatch.setattr(run, "AIRFLOW_URL", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setattr(run.http, "__defaults__", (None, None, 0.5))
        monkeypatch.setattr(run.time, "sleep", lambda s: None)
        assert run.http_retrying("GET", "/api/v2/x") == {"state": "ok"}
        assert seen == ["GET", "GET"]
        seen.clear()
        with pytest.raises(TimeoutError):
            run.http_retrying("POST", "/api/v2/x", {})
        assert seen == ["POST"]
    finally:
        server.shutdown()
        server.server_close()


def test_redis_is_private_to_the_test(redis: RedisServer) -> None:
    """Loopback only, a password that is needed and on no command line, owner-only files."""
    import redis as redis_client

    assert redis.ping()
    with pytest.raises(redis_client.exceptions.AuthenticationError):
        redis_client.Redis(host="127.0.0.1", port=redis.port, socket_timeout=2).ping()
    assert [(address, port) for _, address, port in procs.listeners_of([redis.pid])] == [("127.0.0.1", redis.port)]
    assert redis.password not in Path(f"/proc/{redis.pid}/cmdline").read_text(errors="replace")
    assert redis.folder.stat().st_mode & 0o777 == 0o700
    for name in ("redis.conf", "password", "broker-url"):
        assert (redis.folder / name).stat().st_mode & 0o777 == 0o600, name


def test_shards_and_index_groups_run_on_both_workers(celery_pipeline: Pipeline, redis: RedisServer) -> None:
    pipe = celery_pipeline
    hostnames = {worker_hostname(name) for name in WORKERS}
    workers = [pid for name in WORKERS for pid in procs.with_environ(f"QUOTEFLOW_RUN_COMPONENT=celery-{name}")]
    assert workers, "no Celery worker processes found"
    assert non_loopback_listeners(workers) == []
    for pid in workers:
        assert redis.password not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
        assert redis.password not in Path(f"/proc/{pid}/environ").read_text(errors="replace")

    # quotes_setup ran on the workers already (make run waits for it).
    (setup_run,) = pipe.api("/api/v2/dags/quotes_setup/dagRuns?limit=5")["dag_runs"]
    setup_hosts = {ti["hostname"] for ti in _task_instances(pipe, "quotes_setup", setup_run["dag_run_id"])}
    assert setup_hosts and setup_hosts <= hostnames, setup_hosts

    # The continuous producer run make run started has one shard (shard_size 500): queue a run with one
    # symbol per shard, then end the default run (queued or already running); the queued one starts next.
    manual = airflow_write(
        pipe,
        "POST",
        "/api/v2/dags/quotes_producer/dagRuns",
        {"logical_date": None, "conf": {"shard_size": 1, "connect_spacing_seconds": 0}},
    )

    def only_the_manual_run() -> str | None:
        runs = pipe.api("/api/v2/dags/quotes_producer/dagRuns?state=queued&state=running&limit=20")["dag_runs"]
        for run in runs:
            if run["dag_run_id"] != manual["dag_run_id"]:
                path = f"/api/v2/dags/quotes_producer/dagRuns/{run['dag_run_id']}"
                airflow_write(pipe, "PATCH", path, {"state": "failed"})
        mine = [r["state"] for r in runs if r["dag_run_id"] == manual["dag_run_id"]]
        return "running" if mine == ["running"] and len(runs) == 1 else None

    wait_until("the sharded producer run as the only one", only_the_manual_run, DEADLINE, interval=3)

    def shards_running() -> list[dict] | None:
        tis = _task_instances(pipe, "quotes_producer", manual["dag_run_id"])
        shards = [ti for ti in tis if ti["task_id"] == "produce_quotes" and ti["state"] == "running"]
        return shards if len(shards) == len(SYMBOLS) else None

    shards = wait_until("three producer shards running", shards_running, DEADLINE, interval=5) or []
    since = time.time()
    shard_hosts = {ti["hostname"] for ti in shards}
    print(f"producer shards: {sorted((ti['map_index'], ti['hostname']) for ti in shards)}")
    assert shard_hosts == hostnames, f"shards ran on {shard_hosts}, not on both of {hostnames}"

    def groups_on_both() -> dict[str, set[str]] | None:
        seen: dict[str, set[str]] = {}
        for run in _indexer_runs(pipe, "success"):
            if epoch_ms(run["data_interval_end"]) / 1000 <= pipe.started_at:
                continue
            for ti in _task_instances(pipe, "quotes_indexer", run["dag_run_id"]):
                if ti["task_id"] == "index_group":
                    seen.setdefault(ti["hostname"], set()).add(f"{run['dag_run_id']}[{ti['map_index']}]")
        return seen if set(seen) == hostnames else None

    groups = wait_until("index_group tasks on both workers", groups_on_both, DEADLINE, interval=10) or {}
    print(f"index groups per worker after {time.time() - since:.0f} s: { {h: len(g) for h, g in groups.items()} }")

    # Every window up to the newest successful one is closed: ES holds exactly its Kafka records. Wait for
    # a window that closed after the shards had streamed for a while, so the comparison covers their quotes.
    def closed_after(moment: float) -> list[dict] | None:
        runs = _indexer_runs(pipe, "success")
        return runs if any(epoch_ms(r["data_interval_end"]) / 1000 > moment for r in runs) else None

    runs = wait_until("an indexer window closed after the shards started", lambda: closed_after(since + 30), DEADLINE)
    runs = runs or []
    assert not _indexer_runs(pipe, "failed"), "indexer windows failed"
    closed_end = max(epoch_ms(r["data_interval_end"]) for r in runs)
    ends = offsets_at(pipe.kafka_bootstrap, pipe.topic, int(closed_end))
    starts = {p: pipe.start_offsets.get(p, 0) for p in ends}
    expected = sum(max(0, ends[p] - starts[p]) for p in ends)
    es = Elasticsearch(pipe.es_url, request_timeout=30)
    es.indices.refresh(index="quotes-tradingview-*")
    query = {
        "bool": {
            "filter": [{"term": {"kafka.topic": pipe.topic}}],
            "should": [
                {
                    "bool": {
                        "filter": [
                            {"term": {"kafka.partition": p}},
                            {"range": {"kafka.offset": {"gte": starts[p], "lt": ends[p]}}},
                        ]
                    }
                }
                for p in ends
            ],
            "minimum_should_match": 1,
        }
    }
    indexed = es.count(index="quotes-tradingview-*", query=query)["count"]
    end_text = datetime.fromtimestamp(closed_end / 1000, tz=UTC).isoformat()
    print(f"closed windows up to {end_text}: {expected} records in Kafka, {indexed} documents in ES")
    assert expected > 0
    assert indexed == expected
