"""elasticsearch_default over https with a CA file, basic auth and an API key, against a server that checks them.

The local node has security off, so Debian's nginx (tests/helpers/tls_proxy.py) stands at its edge
with a certificate signed by a CA made here, and refuses any request without the one user's Basic
login or the one API key. Setup and one indexer window run through the real CLI (the same code the
DAGs call), the live view's reads through its library with the plugin's client construction, each
once with basic auth and once with the API key; the proxy's access log proves every one went through
it. Then a wrong CA, no CA and wrong credentials: each fails at once, naming the connection and
what to set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from quoteflow.elastic.connect import ElasticsearchAccessError
from quoteflow.liveview.service import LiveNames, LiveView
from quoteflow.settings import connection_from_env, elasticsearch_client_args
from tests.helpers.indexing import LOG_APPEND, es_count, produce, quote_value
from tests.helpers.tls_proxy import CertificateAuthority, TlsProxy, make_ca

ROOT = Path(__file__).resolve().parents[2]
CONN_ID = "elasticsearch_default"
RECORDS = 40


def es_connection(proxy: TlsProxy, auth: str, *, ca_certs: Path | None, password: str | None = None) -> str:
    """``AIRFLOW_CONN_ELASTICSEARCH_DEFAULT`` for the proxy with ``auth`` = basic or api_key."""
    conn: dict[str, Any] = {"conn_type": "elasticsearch", "host": "127.0.0.1", "port": proxy.port, "schema": "https"}
    extra: dict[str, Any] = {} if ca_certs is None else {"ca_certs": str(ca_certs)}
    if auth == "basic":
        conn.update(login=proxy.user, password=password or proxy.password)
    else:
        extra["api_key"] = password or proxy.api_key
    conn["extra"] = extra
    return json.dumps(conn)


def cli(es_conn: str, kafka_bootstrap: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m quoteflow <args>`` with the connections in its environment (never its argv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env["AIRFLOW_CONN_ELASTICSEARCH_DEFAULT"] = es_conn
    env["AIRFLOW_CONN_KAFKA_DEFAULT"] = json.dumps(
        {"conn_type": "kafka", "extra": {"bootstrap.servers": kafka_bootstrap}}
    )
    return subprocess.run(
        [sys.executable, "-m", "quoteflow", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def new_lines(proxy: TlsProxy, before: int) -> list[str]:
    return proxy.access_lines()[before:]


@pytest.mark.parametrize("auth", ["basic", "api_key"])
def test_setup_indexer_and_live_view_through_tls_and_auth(
    auth: str,
    proxy: TlsProxy,
    ca: CertificateAuthority,
    kafka_bootstrap: str,
    make_topic,
    fresh_index_prefix: str,
    es_client,
) -> None:
    topic, dlq = make_topic(2, LOG_APPEND), make_topic(2, LOG_APPEND)
    es_conn = es_connection(proxy, auth, ca_certs=ca.cert_path)
    names = ["--topic", topic, "--dlq-topic", dlq, "--index-prefix", fresh_index_prefix]

    before = len(proxy.access_lines())
    setup = summary(cli(es_conn, kafka_bootstrap, "setup", "--partitions", "2", *names))
    assert setup["template"] in ("created", "updated", "unchanged"), setup
    template_calls = [line for line in new_lines(proxy, before) if " /_index_template/quotes " in line]
    assert template_calls and all(line.endswith(f" 200 login={auth}") for line in template_calls), template_calls

    start = datetime.now(UTC) - timedelta(seconds=1)
    produce(kafka_bootstrap, topic, [quote_value(i) for i in range(RECORDS)])
    end = datetime.now(UTC) + timedelta(milliseconds=200)
    before = len(proxy.access_lines())
    window = ["--start", start.isoformat(), "--end", end.isoformat()]
    indexed = summary(cli(es_conn, kafka_bootstrap, "index", *names, *window))
    assert (indexed["read"], indexed["indexed"], indexed["dead_lettered"]) == (RECORDS, RECORDS, 0), indexed
    bulk = [line for line in new_lines(proxy, before) if " /_bulk " in line]
    assert bulk and all(line.endswith(f" 200 login={auth}") for line in bulk), bulk
    assert es_count(es_client, fresh_index_prefix) == RECORDS, "the documents are not in the node behind the proxy"

    # The live view, with the client the plugin builds (its own request_timeout).
    info = connection_from_env(CONN_ID, {"AIRFLOW_CONN_ELASTICSEARCH_DEFAULT": es_conn})
    assert info is not None
    es_args = elasticsearch_client_args(info)
    from elasticsearch import Elasticsearch

    view = LiveView(lambda: Elasticsearch(**es_args, request_timeout=10), {"bootstrap.servers": kafka_bootstrap})
    try:
        before = len(proxy.access_lines())
        live = LiveNames(topic=topic, dlq_topic=dlq, index_pattern=f"{fresh_index_prefix}*")
        symbol = quote_value(RECORDS - 1)[0].decode()
        latest = view.latest(live, [symbol])
        assert latest[symbol]["indexed"] is not None, latest
        chart = view.chart(live, symbol, 900)
        assert chart["indexed_points"] >= 1, chart
        # nginx writes an access line when the request ends: give the second one a moment on a loaded machine.
        deadline = time.monotonic() + 10
        while True:
            searches = [line for line in new_lines(proxy, before) if "/_search " in line]
            if len(searches) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(searches) >= 2 and all(line.endswith(f" 200 login={auth}") for line in searches), searches
    finally:
        view.close()


@pytest.mark.parametrize("which", ["another CA", "no CA (system store)"])
def test_an_unverifiable_certificate_names_the_connection_and_ca_certs(
    which: str, proxy: TlsProxy, tmp_path: Path, kafka_bootstrap: str, make_topic
) -> None:
    ca_certs = make_ca(tmp_path, "stranger CA").cert_path if which == "another CA" else None
    es_conn = es_connection(proxy, "basic", ca_certs=ca_certs)
    topics = ["--topic", make_topic(1, LOG_APPEND), "--dlq-topic", make_topic(1, LOG_APPEND), "--partitions", "1"]
    before = len(proxy.access_lines())
    result = cli(es_conn, kafka_bootstrap, "setup", *topics)
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("configuration error: ") and f"connection '{CONN_ID}'" in message, message
    assert "presented a certificate that does not verify" in message and "extra.ca_certs" in message, message
    assert ("stranger-CA.crt" in message) if ca_certs else ("system's CA store" in message), message
    assert proxy.password not in result.stderr + result.stdout
    assert new_lines(proxy, before) == [], "no request may pass a certificate check that failed"

    # The library, as the DAGs and the live view use it: one attempt, no retries as if it were an outage.
    from elasticsearch import Elasticsearch

    info = connection_from_env(CONN_ID, {"AIRFLOW_CONN_ELASTICSEARCH_DEFAULT": es_conn})
    assert info is not None
    started = time.monotonic()
    with pytest.raises(ElasticsearchAccessError, match="verify_certs"):
        Elasticsearch(**elasticsearch_client_args(info)).cluster.health()
    assert time.monotonic() - started < 10, "a certificate that cannot verify must not be retried"


@pytest.mark.parametrize("auth", ["basic", "api_key"])
def test_refused_credentials_name_the_connection(
    auth: str, proxy: TlsProxy, ca: CertificateAuthority, kafka_bootstrap: str, make_topic, fresh_index_prefix: str
) -> None:
    es_conn = es_connection(proxy, auth, ca_certs=ca.cert_path, password="d3JvbmctaWQ6d3Jvbmcta2V5")
    topic, dlq = make_topic(1, LOG_APPEND), make_topic(1, LOG_APPEND)
    produce(kafka_bootstrap, topic, [quote_value(i) for i in range(5)])
    end = datetime.now(UTC) + timedelta(milliseconds=200)
    before = len(proxy.access_lines())
    started = time.monotonic()
    result = cli(
        es_conn,
        kafka_bootstrap,
        "index",
        *("--topic", topic, "--dlq-topic", dlq, "--index-prefix", fresh_index_prefix),
        *("--start", (end - timedelta(minutes=1)).isoformat(), "--end", end.isoformat()),
        "--retry-budget",
        "300",
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert f"refused the credentials of connection '{CONN_ID}'" in message and "HTTP 401" in message, message
    sent = f"basic auth as user '{proxy.user}'" if auth == "basic" else "extra.api_key"
    assert sent in message and "login and password, or extra.api_key" in message, message
    refused = [line for line in new_lines(proxy, before) if line.endswith(" 401 login=")]
    assert refused and all(" /_bulk " in line for line in refused), refused
    # Generous: far below the 300 s retry budget the indexer would spend on an outage.
    assert elapsed < 60, f"refused credentials took {elapsed:.0f} s to report"

    info = connection_from_env(CONN_ID, {"AIRFLOW_CONN_ELASTICSEARCH_DEFAULT": es_conn})
    assert info is not None
    from elasticsearch import Elasticsearch

    view = LiveView(
        lambda: Elasticsearch(**elasticsearch_client_args(info), request_timeout=10),
        {"bootstrap.servers": kafka_bootstrap},
    )
    try:
        with pytest.raises(ElasticsearchAccessError, match=f"connection '{CONN_ID}'"):
            view.latest(LiveNames(topic=topic, dlq_topic=dlq, index_pattern=f"{fresh_index_prefix}*"), ["X:Y"])
    finally:
        view.close()
