"""config/quoteflow_logging.py: Airflow resolves its Elasticsearch task handler, and that handler's own
client writes and reads task logs on a secured Elasticsearch (TLS, a login in the host URL).

The secured node is Debian's nginx with TLS and a login check in front of the local Elasticsearch
(tests/helpers/tls_proxy.py), as in the integration tier.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers.tls_proxy import CertificateAuthority, TlsProxy

ROOT = Path(__file__).resolve().parents[2]
REMOTE_ON = {
    "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
    "AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS": "quoteflow_logging.LOGGING_CONFIG",
    "AIRFLOW__ELASTICSEARCH__WRITE_TO_ES": "True",
    "AIRFLOW__ELASTICSEARCH__JSON_FORMAT": "True",
    "AIRFLOW__ELASTICSEARCH__WRITE_STDOUT": "False",
}
RESOLVE = """
import json, logging.config, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import airflow  # as every Airflow process does: Airflow imports the module named by logging_config_class
    import quoteflow_logging
    logging.config.dictConfig(quoteflow_logging.LOGGING_CONFIG)
    from airflow.sdk.log import load_remote_log_handler
    from airflow.logging_config import get_remote_task_log
    io = load_remote_log_handler()
    print(json.dumps({
        "io": type(io).__name__,
        "same": io is quoteflow_logging.REMOTE_TASK_LOG and get_remote_task_log() is io,
        "target_index": io.target_index, "write_to_es": io.write_to_es, "json_format": io.json_format,
        "task_handler": [c.__name__ for c in type(logging.getLogger("airflow.task").handlers[0]).__mro__[:2]],
        "warnings": [str(w.message) for w in caught if "REMOTE_TASK_LOG" in str(w.message)],
    }))
"""


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -c code`` with this session's Airflow environment plus ``env``, config/ on the path."""
    full = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(ROOT / "config"), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120, check=False
    )


def test_airflow_resolves_the_providers_handler_from_our_module(es_url: str) -> None:
    env = {**REMOTE_ON, "AIRFLOW__ELASTICSEARCH__HOST": es_url, "AIRFLOW__ELASTICSEARCH__TARGET_INDEX": "airflow-logs"}
    run = run_python(RESOLVE, env)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got == {
        "io": "ElasticsearchRemoteLogIO",
        "same": True,
        "target_index": "airflow-logs",
        "write_to_es": True,
        "json_format": True,
        "task_handler": ["QuoteflowElasticsearchTaskHandler", "ElasticsearchTaskHandler"],  # the provider's, subclassed
        "warnings": [],
    }


@pytest.mark.parametrize("option", ["AIRFLOW__ELASTICSEARCH__WRITE_TO_ES", "AIRFLOW__ELASTICSEARCH__HOST"])
def test_a_half_set_configuration_is_refused_naming_the_variable(option: str, es_url: str) -> None:
    env = {**REMOTE_ON, "AIRFLOW__ELASTICSEARCH__HOST": es_url, option: "False" if "WRITE" in option else ""}
    run = run_python("import airflow", env)
    assert run.returncode != 0 and option in run.stderr, run.stderr[-2000:]


@pytest.fixture
def log_index(es_client) -> Iterator[str]:
    index = f"airflow-logs-test-{uuid.uuid4().hex[:10]}"
    yield index
    es_client.options(ignore_status=404).indices.delete(index=index)


def test_the_handlers_own_client_writes_and_reads_through_tls_and_a_login(
    proxy: TlsProxy, ca: CertificateAuthority, log_index: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.elasticsearch.log.es_task_handler import ElasticsearchRemoteLogIO

    for name, value in REMOTE_ON.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AIRFLOW__ELASTICSEARCH__HOST", f"https://{proxy.user}:{proxy.password}@127.0.0.1:{proxy.port}")
    monkeypatch.setenv("AIRFLOW__ELASTICSEARCH_CONFIGS__CA_CERTS", str(ca.cert_path))
    monkeypatch.setenv("AIRFLOW__ELASTICSEARCH__TARGET_INDEX", log_index)
    monkeypatch.setenv("AIRFLOW__ELASTICSEARCH__INDEX_PATTERNS", log_index)
    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(tmp_path))
    io = ElasticsearchRemoteLogIO.from_config()

    run_id = f"manual__{uuid.uuid4().hex}"
    ti = SimpleNamespace(dag_id="quotes_indexer", task_id="index_window", run_id=run_id, map_index=-1, try_number=1)
    lines = [
        {"timestamp": "2026-12-02T00:00:00.000000Z", "level": "info", "logger": "quoteflow.indexer", "event": "one"},
        {"timestamp": "2026-12-02T00:00:01.000000Z", "level": "info", "logger": "quoteflow.indexer", "event": "two"},
    ]
    log_file = tmp_path / "dag_id=quotes_indexer" / "attempt=1.log"
    log_file.parent.mkdir()
    log_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    before = len(proxy.access_lines())

    io.upload(log_file.relative_to(tmp_path), ti)
    io.client.indices.refresh(index=log_index)
    _, messages = io.read("", ti)

    assert [json.loads(m)["event"] for m in messages] == ["one", "two"]
    calls = proxy.access_lines()[before:]
    assert any(" /_bulk " in line and line.endswith(" 200 login=basic") for line in calls), calls
    assert log_file.exists(), "delete_local_logs is off: the UI reads a running task's log from the file"


def test_an_unreachable_elasticsearch_keeps_the_local_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from airflow.providers.elasticsearch.log.es_task_handler import ElasticsearchRemoteLogIO

    for name, value in REMOTE_ON.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AIRFLOW__ELASTICSEARCH__HOST", "http://127.0.0.1:1")
    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(tmp_path))
    io = ElasticsearchRemoteLogIO.from_config()
    ti = SimpleNamespace(dag_id="d", task_id="t", run_id="manual__x", map_index=-1, try_number=1)
    log_file = tmp_path / "attempt=1.log"
    log_file.write_text(json.dumps({"event": "kept", "level": "info"}) + "\n")

    io.upload("attempt=1.log", ti)  # fails inside, logged, never raised into the task's end

    assert log_file.read_text().startswith('{"event": "kept"')
    assert "Unable to insert logs into Elasticsearch" in capsys.readouterr().out  # Airflow's structlog output


LOGIN_FROM_CONNECTION = """
import json, logging.config, sys
from types import SimpleNamespace
import airflow
import quoteflow_logging
logging.config.dictConfig(quoteflow_logging.LOGGING_CONFIG)
handler = logging.getLogger("airflow.task").handlers[0]
io = quoteflow_logging.REMOTE_TASK_LOG
ti = SimpleNamespace(dag_id="quotes_indexer", task_id="index_window", run_id=sys.argv[1], map_index=-1, try_number=1)
io.upload(sys.argv[2], ti)
handler.client.indices.refresh(index=io.target_index)
_, messages = io.read("", ti)
print(json.dumps({
    "events": [json.loads(m)["event"] for m in messages],
    "reader_is_own_client": handler.io.client is handler.client,
    "handler_counts": handler.client.count(index=io.target_index)["count"],
}))
"""


def test_the_login_comes_from_the_connection_not_a_config_value(
    proxy: TlsProxy, ca: CertificateAuthority, log_index: str, tmp_path: Path
) -> None:
    """Compose's way: ``[elasticsearch] host`` without credentials, the login only in ``elasticsearch_default``."""
    connection = {"conn_type": "elasticsearch", "host": "127.0.0.1", "login": proxy.user, "password": proxy.password}
    env = {
        **REMOTE_ON,
        "AIRFLOW__ELASTICSEARCH__HOST": f"https://127.0.0.1:{proxy.port}",
        "AIRFLOW__ELASTICSEARCH_CONFIGS__CA_CERTS": str(ca.cert_path),
        "AIRFLOW__ELASTICSEARCH__TARGET_INDEX": log_index,
        "AIRFLOW__ELASTICSEARCH__INDEX_PATTERNS": log_index,
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(tmp_path),
        "AIRFLOW_CONN_ELASTICSEARCH_DEFAULT": json.dumps(connection),
    }
    log_file = tmp_path / "attempt=1.log"
    log_file.write_text(
        json.dumps({"timestamp": "2026-12-02T00:00:00.000000Z", "level": "info", "event": "one"}) + "\n"
    )
    before = len(proxy.access_lines())

    code = LOGIN_FROM_CONNECTION
    run = subprocess.run(
        [sys.executable, "-c", code, f"manual__{uuid.uuid4().hex}", "attempt=1.log"],
        env={**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(ROOT / "config"), str(ROOT)])},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got == {"events": ["one"], "reader_is_own_client": True, "handler_counts": 1}
    calls = proxy.access_lines()[before:]
    assert any(" /_bulk " in line and line.endswith(" 200 login=basic") for line in calls), calls
    assert not any(" 401 " in line for line in calls), calls
    # Without the connection's login the same settings are refused by the node: the login came from there.
    env.pop("AIRFLOW_CONN_ELASTICSEARCH_DEFAULT")
    refused = subprocess.run(
        [sys.executable, "-c", code, f"manual__{uuid.uuid4().hex}", "attempt=1.log"],
        env={**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(ROOT / "config"), str(ROOT)])},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert refused.returncode != 0 or json.loads(refused.stdout.strip().splitlines()[-1])["events"] == []
