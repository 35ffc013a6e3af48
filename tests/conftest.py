"""Test harness: tiers by folder, real Kafka/Elasticsearch endpoints, an isolated Airflow home.

Airflow reads its configuration when first imported, so the environment is set here, at
import time of this conftest, before any test module imports Airflow.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient
    from elasticsearch import Elasticsearch

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"
KAFKA_PORT = int(os.environ.get("QUOTEFLOW_KAFKA_PORT", "9092"))
ES_PORT = int(os.environ.get("QUOTEFLOW_ES_PORT", "9200"))
KAFKA_BOOTSTRAP = f"127.0.0.1:{KAFKA_PORT}"
ES_URL = f"http://127.0.0.1:{ES_PORT}"

# ---------------------------------------------------------------- Airflow environment (before any import)
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="quoteflow-airflow-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW_CONN_KAFKA_DEFAULT": json.dumps(
            {
                "conn_type": "kafka",
                "extra": {"bootstrap.servers": KAFKA_BOOTSTRAP, "group.id": "quoteflow-tests"},
            }
        ),
        "AIRFLOW_CONN_ELASTICSEARCH_DEFAULT": json.dumps(
            {"conn_type": "elasticsearch", "host": "127.0.0.1", "port": ES_PORT, "schema": "http"}
        ),
    }
)
os.environ.pop("AIRFLOW_CONN_KIBANA_DEFAULT", None)
for path in (str(ROOT), str(DAGS)):
    if path not in sys.path:
        sys.path.insert(0, path)

# Module-scoped fixtures `ca` and `proxy` (a TLS-terminating nginx in front of the local ES).
pytest_plugins = ["tests.helpers.tls_proxy"]

TIERS = ("unit", "integration", "dags", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier (its folder), then refuse early if a needed service is down."""
    tests_dir = Path(__file__).parent
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(tests_dir)
        if rel.parts and rel.parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, rel.parts[0]))
    if any(item.get_closest_marker("integration") or item.get_closest_marker("e2e") for item in items):
        _require_services()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


# ---------------------------------------------------------------- services


def _port_answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _es_healthy() -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{ES_URL}/_cluster/health", timeout=5) as resp:
            return json.load(resp).get("status") in ("yellow", "green")
    except OSError:
        return False


def _require_services() -> None:
    """Stop the whole run with one clear message if Kafka or Elasticsearch is not answering."""
    down = []
    if not _port_answers(KAFKA_PORT):
        down.append(f"Kafka is not answering at {KAFKA_BOOTSTRAP}")
    if not _es_healthy():
        down.append(f"Elasticsearch is not answering (or not healthy) at {ES_URL}")
    if down:
        pytest.exit(
            "; ".join(down) + ". Start the local services with `make services` (or `scripts/services up`), "
            "check them with `scripts/services status`, or run only the unit tests: make test ARGS='-m unit'",
            returncode=3,
        )


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """``host:port`` of the real local Kafka broker."""
    _require_services()
    return KAFKA_BOOTSTRAP


@pytest.fixture(scope="session")
def es_url() -> str:
    """Base URL of the real local Elasticsearch node."""
    _require_services()
    return ES_URL


@pytest.fixture(scope="session")
def es_client(es_url: str) -> Iterator[Elasticsearch]:
    """An ``elasticsearch.Elasticsearch`` client for the local node."""
    from elasticsearch import Elasticsearch

    client = Elasticsearch(es_url, request_timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    """A confluent-kafka ``AdminClient`` for the local broker."""
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def make_topic(kafka_admin: AdminClient) -> Iterator[Callable[..., str]]:
    """Factory for fresh, uniquely named topics (deleted after the test)."""
    from confluent_kafka.admin import NewTopic

    created: list[str] = []

    def _make(partitions: int = 1, config: dict[str, str] | None = None, name: str | None = None) -> str:
        topic = name or f"test.{uuid.uuid4().hex[:12]}"
        futures = kafka_admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})],
            operation_timeout=30,
        )
        futures[topic].result(timeout=60)
        created.append(topic)
        _wait_for_topic(kafka_admin, topic, partitions)
        return topic

    yield _make
    if created:
        for future in kafka_admin.delete_topics(created, operation_timeout=30).values():
            try:
                future.result(timeout=60)
            except Exception as exc:  # noqa: BLE001 - teardown must not mask the test's own result
                print(f"warning: could not delete a test topic: {exc}", file=sys.stderr)


def _wait_for_topic(admin, topic: str, partitions: int, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = admin.list_topics(topic=topic, timeout=10)
        info = meta.topics.get(topic)
        if info is not None and info.error is None and len(info.partitions) == partitions:
            if all(p.leader >= 0 for p in info.partitions.values()):
                return
        time.sleep(0.1)
    raise TimeoutError(f"topic {topic} has no leader for all {partitions} partitions after {timeout} s")


@pytest.fixture
def fresh_index_prefix(es_client: Elasticsearch) -> Iterator[str]:
    """A unique index-name prefix (``quotes-test-<hex>-``); every index under it is deleted after the test."""
    prefix = f"quotes-test-{uuid.uuid4().hex[:10]}-"
    yield prefix
    es_client.options(ignore_status=404).indices.delete(index=f"{prefix}*", expand_wildcards="all")


# ---------------------------------------------------------------- Airflow metadata database


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata database in the session's temporary AIRFLOW_HOME."""
    from airflow.utils.db import initdb

    initdb()
    return _AIRFLOW_HOME


@pytest.fixture(autouse=True)
def _airflow_db_for_dag_tests(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("dags") or request.node.get_closest_marker("e2e"):
        request.getfixturevalue("airflow_db")
