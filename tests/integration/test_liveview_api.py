"""The quotes view's JSON endpoints through Airflow's own API server app, against real Kafka and Elasticsearch.

Records go to a fresh topic; the older ones are also indexed (as the indexer would, with their real
offsets) into a fresh index prefix; the newest exist only in Kafka. The endpoints must answer with
exactly those values, and refuse callers without an Airflow token.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from quoteflow.elastic.documents import bulk_lines
from quoteflow.elastic.template import quote_mappings
from quoteflow.quotes import Quote, format_timestamp, split_symbol
from tests.helpers import auth_manager

SOL, BTC = "BINANCE:SOLUSDT", "BINANCE:BTCUSDT"
SOL_RECORDS, SOL_INDEXED, BTC_RECORDS = 10, 7, 4
CANDLES = f"/api/candles?symbol={SOL}&resolution=5"
LC_JS = "/static/vendor/lightweight-charts.standalone.production.js"
ROUTES = [
    "/",
    "/static/app.js",
    LC_JS,
    "/api/symbols",
    f"/api/chart?symbol={SOL}",
    CANDLES,
    "/api/latest",
    "/api/health",
]
API_ROUTES = ["/api/symbols", f"/api/chart?symbol={SOL}", CANDLES, "/api/latest", "/api/health"]
# FastAPI's self-description: nobody needs it, and it would answer without any credential.
SCHEMA_ROUTES = ["/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"]
USERS = {"admin": "admin", "reader": "viewer", **{user: "viewer" for user in auth_manager.DENIED_DAG}}


def _quote(symbol: str, price: float, received_s: float) -> Quote:
    exchange, ticker = split_symbol(symbol)
    return Quote(
        schema=1,
        source="tradingview",
        symbol=symbol,
        exchange=exchange,
        ticker=ticker,
        price=price,
        change=round(price - 100, 4),
        change_percent=round((price - 100) / 100 * 100, 4),
        volume=1000 + price,
        bid=price - 0.01,
        ask=price + 0.01,
        high=None,
        low=None,
        open=None,
        prev_close=100.0,
        currency="USDT",
        update_mode="streaming",
        event_time=format_timestamp(int(received_s)),
        received_at=format_timestamp(received_s, milliseconds=True),
    )


@pytest.fixture(scope="module")
def client(airflow_db: Path):
    """A TestClient on Airflow's API server app (plugins loaded from plugins/), and a valid Bearer token (admin).

    The app's auth manager is SimpleAuthManager with users who may not read one of the pipeline's DAGs
    (tests/helpers/auth_manager.py), and a viewer-role ``reader``.
    """
    from airflow.api_fastapi.app import create_app
    from starlette.testclient import TestClient

    with pytest.MonkeyPatch.context() as env:
        # An API server needs a JWT signing key; `airflow standalone` writes one, a bare create_app() does not.
        if "AIRFLOW__API_AUTH__JWT_SECRET" not in os.environ:
            env.setenv("AIRFLOW__API_AUTH__JWT_SECRET", uuid.uuid4().hex + uuid.uuid4().hex)
        env.setenv("AIRFLOW__CORE__AUTH_MANAGER", auth_manager.CLASS_PATH)
        env.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", ",".join(f"{u}:{r}" for u, r in USERS.items()))
        with TestClient(create_app()) as test_client:
            yield test_client, _login(test_client, airflow_db, "admin")


def _login(test_client, airflow_db: Path, username: str) -> str:
    """An access token from Airflow's own login endpoint."""
    passwords = json.loads((airflow_db / "simple_auth_manager_passwords.json.generated").read_text())
    resp = test_client.post("/auth/token", json={"username": username, "password": passwords[username]})
    assert resp.status_code == 201, resp.text
    return resp.json()["access_token"]


@pytest.fixture
def pipeline_data(kafka_bootstrap, make_topic, es_client, fresh_index_prefix, monkeypatch):
    """Fresh topic + DLQ + index prefix holding known quotes; the view is pointed at them through [quoteflow]."""
    topic = make_topic(partitions=2, config={"message.timestamp.type": "LogAppendTime"})
    dlq = make_topic(partitions=1)
    group = f"quoteflow-indexer-test-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "linger.ms": 5})
    delivered: list = []
    base = time.time() - 120
    plan = [(SOL, 0, 150.0 + i * 0.37, base + i * 3.3) for i in range(SOL_RECORDS)]
    plan += [(BTC, 1, 90000.0 + i * 11.5, base + 1.1 + i * 4.7) for i in range(BTC_RECORDS)]
    for symbol, partition, price, received in plan:
        quote = _quote(symbol, round(price, 4), received)
        producer.produce(
            topic,
            key=symbol.encode(),
            value=quote.to_json(),
            partition=partition,
            on_delivery=lambda err, msg: delivered.append((err, msg)),
        )
    now_ms = int(time.time() * 1000)
    producer.produce(dlq, key=b"x", value=b"not json", timestamp=now_ms - 2 * 3600_000)  # older than an hour
    producer.produce(dlq, key=b"x", value=b"not json", timestamp=now_ms - 60_000)
    producer.produce(dlq, key=b"x", value=b"{}", timestamp=now_ms - 1000)
    assert producer.flush(30) == 0
    assert all(err is None for err, _ in delivered)
    records = {(m.partition(), m.offset()): m for _, m in delivered}
    sol = sorted((o, m) for (p, o), m in records.items() if p == 0)
    btc = sorted((o, m) for (p, o), m in records.items() if p == 1)
    indexed = [m for _, m in sol[:SOL_INDEXED]] + [m for _, m in btc]
    docs = []
    for msg in indexed:
        action, source, _ = bulk_lines(
            msg.value(), topic, msg.partition(), msg.offset(), msg.timestamp()[1], fresh_index_prefix
        ).split(b"\n")
        meta = json.loads(action)["index"]
        docs.append((meta["_index"], meta["_id"], json.loads(source)))
    for index in {i for i, _, _ in docs}:
        es_client.indices.create(index=index, mappings=quote_mappings())
    for index, doc_id, doc in docs:
        es_client.index(index=index, id=doc_id, document=doc)
    es_client.indices.refresh(index=f"{fresh_index_prefix}*")

    committer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    try:  # the indexer committed the end of what it indexed
        committer.commit(
            offsets=[TopicPartition(topic, 0, SOL_INDEXED), TopicPartition(topic, 1, BTC_RECORDS)], asynchronous=False
        )
    finally:
        committer.close()

    monkeypatch.setenv("AIRFLOW__QUOTEFLOW__QUOTES_TOPIC", topic)
    monkeypatch.setenv("AIRFLOW__QUOTEFLOW__DLQ_TOPIC", dlq)
    monkeypatch.setenv("AIRFLOW__QUOTEFLOW__INDEX_PATTERN", f"{fresh_index_prefix}*")
    monkeypatch.setenv("AIRFLOW__QUOTEFLOW__CONSUMER_GROUP", group)
    monkeypatch.setenv("AIRFLOW__QUOTEFLOW__SYMBOLS", f"{SOL},{BTC}")
    return {
        "sol": [json.loads(m.value()) | {"offset": o} for o, m in sol],
        "btc": [json.loads(m.value()) | {"offset": o} for o, m in btc],
    }


def test_every_route_refuses_a_caller_without_a_token(client) -> None:
    test_client, token = client
    test_client.cookies.clear()
    for route in ROUTES:
        resp = test_client.get(f"/quotes-view{route}")
        assert resp.status_code == 401, f"{route} answered {resp.status_code} without credentials"
        assert resp.headers.get("www-authenticate") == "Bearer", route
        resp = test_client.get(f"/quotes-view{route}", headers={"Authorization": "Bearer not-a-jwt"})
        assert resp.status_code == 401, f"{route} answered {resp.status_code} to a token that is not a JWT"
    for route in SCHEMA_ROUTES:
        for headers in ({}, {"Authorization": f"Bearer {token}"}):
            resp = test_client.get(f"/quotes-view{route}", headers=headers)
            assert resp.status_code == 404, f"{route} answered {resp.status_code} {resp.text[:80]!r} ({headers})"


def _forged_tokens(token: str) -> dict[str, str]:
    """Variants of a real admin token, each wrong in exactly one way, built with PyJWT and Airflow's own config."""
    import jwt
    from airflow.configuration import conf

    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    secret = conf.get("api_auth", "jwt_secret")
    now = int(time.time())

    def sign(payload: dict, key: str = secret) -> str:
        return jwt.encode(payload, key, algorithm=header["alg"], headers={"kid": header.get("kid")})

    return {
        "re-signed unchanged (control)": sign(claims),
        "signed with the wrong key": sign(claims, uuid.uuid4().hex * 2),
        "expired": sign(claims | {"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}),
        "with the task audience": sign(claims | {"aud": conf.get("execution_api", "jwt_audience")}),
    }


def test_forged_tokens_are_answered_401_by_header_and_by_cookie(client, pipeline_data) -> None:
    test_client, token = client
    forged = _forged_tokens(token)
    control = forged.pop("re-signed unchanged (control)")
    test_client.cookies.clear()
    # The control proves the forgeries are well-formed: the same claims and key are accepted.
    resp = test_client.get("/quotes-view/api/symbols", headers={"Authorization": f"Bearer {control}"})
    assert resp.status_code == 200, resp.text
    for what, bad in forged.items():
        for route in ROUTES:
            resp = test_client.get(f"/quotes-view{route}", headers={"Authorization": f"Bearer {bad}"})
            assert resp.status_code == 401, f"{route}: a token {what} got {resp.status_code} {resp.text[:120]}"
            test_client.cookies.set("_token", bad)
            try:
                resp = test_client.get(f"/quotes-view{route}")
            finally:
                test_client.cookies.clear()
            assert resp.status_code == 401, f"{route}: a _token cookie {what} got {resp.status_code} {resp.text[:120]}"


def test_a_signed_in_user_without_read_access_to_a_pipeline_dag_is_refused_403(client, airflow_db, pipeline_data):
    test_client, _ = client
    test_client.cookies.clear()
    for user, dag_id in auth_manager.DENIED_DAG.items():
        token = _login(test_client, airflow_db, user)
        # Signed in: Airflow's own API answers this user.
        assert test_client.get("/api/v2/version", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        for route in ROUTES:
            resp = test_client.get(f"/quotes-view{route}", headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 403, f"{user} got {resp.status_code} from {route}"
            assert dag_id in resp.json()["detail"], resp.text
        test_client.cookies.set("_token", token)
        try:
            assert test_client.get("/quotes-view/api/health").status_code == 403
        finally:
            test_client.cookies.clear()
    # A viewer, who may read both DAGs, sees everything.
    token = _login(test_client, airflow_db, "reader")
    for route in ROUTES:
        resp = test_client.get(f"/quotes-view{route}", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200, f"reader got {resp.status_code} from {route}: {resp.text[:200]}"


def test_every_route_answers_an_authenticated_user_by_header_and_by_the_ui_cookie(client, pipeline_data) -> None:
    test_client, token = client
    for route in ROUTES:
        resp = test_client.get(f"/quotes-view{route}", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200, f"{route}: {resp.status_code} {resp.text[:200]}"
    page = test_client.get("/quotes-view/", headers={"Authorization": f"Bearer {token}"})
    assert 'id="last-price"' in page.text and "vendor/uPlot.iife.min.js" in page.text
    uplot = test_client.get(
        "/quotes-view/static/vendor/uPlot.iife.min.js", headers={"Authorization": f"Bearer {token}"}
    )
    assert uplot.status_code == 200 and "uPlot" in uplot.text[:200], "run `npm ci` in plugins/quotes_view"
    assert "vendor/lightweight-charts.standalone.production.js" in page.text
    charts = test_client.get(f"/quotes-view{LC_JS}", headers={"Authorization": f"Bearer {token}"})
    assert charts.status_code == 200 and "Lightweight Charts" in charts.text[:300], "run `make assets`"
    # The Airflow UI's iframe sends no header, only the session cookie set at login.
    test_client.cookies.set("_token", token)
    try:
        assert test_client.get("/quotes-view/api/symbols").status_code == 200
    finally:
        test_client.cookies.clear()


def test_latest_is_the_newest_record_and_the_newest_document(client, pipeline_data) -> None:
    test_client, token = client
    resp = test_client.get(
        f"/quotes-view/api/latest?symbol={SOL}&symbol={BTC}", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 200, resp.text
    latest = resp.json()["latest"]
    newest_sol, newest_indexed_sol = pipeline_data["sol"][-1], pipeline_data["sol"][SOL_INDEXED - 1]
    sol = latest[SOL]
    assert sol["from"] == "kafka" and sol["kafka_error"] is None
    for name in ("price", "change", "change_percent", "volume", "event_time", "received_at", "offset"):
        assert sol["quote"][name] == newest_sol[name], name
        assert sol["indexed"][name] == newest_indexed_sol[name], name
    btc = latest[BTC]
    assert btc["from"] == "elasticsearch"
    assert btc["quote"]["price"] == pipeline_data["btc"][-1]["price"]
    assert btc["quote"]["offset"] == pipeline_data["btc"][-1]["offset"]


def test_chart_is_es_buckets_then_the_unindexed_kafka_ticks(client, pipeline_data) -> None:
    test_client, token = client
    resp = test_client.get(
        f"/quotes-view/api/chart?symbol={SOL}&range=15m", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 200, resp.text
    chart = resp.json()
    assert chart["bucket_s"] == 5 and chart["range_s"] == 900
    from quoteflow.liveview.service import epoch_ms

    buckets: dict[int, tuple[int, float]] = {}
    for quote in pipeline_data["sol"][:SOL_INDEXED]:
        t = epoch_ms(quote["received_at"])
        buckets[t // 5000] = max(buckets.get(t // 5000, (0, 0.0)), (t, quote["price"]))
    expected = [buckets[k] for k in sorted(buckets)]
    expected += [(epoch_ms(q["received_at"]), q["price"]) for q in pipeline_data["sol"][SOL_INDEXED:]]
    assert chart["indexed_points"] == len(buckets) < SOL_INDEXED  # aggregated, not one point per document
    assert list(zip(chart["t"], chart["price"], strict=True)) == expected


def test_health_reports_lag_dead_letters_and_tick_age(client, pipeline_data) -> None:
    test_client, token = client
    before = time.time()
    resp = test_client.get(
        f"/quotes-view/api/health?symbol={SOL}&symbol={BTC}", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 200, resp.text
    health = resp.json()
    lag = {p["partition"]: p for p in health["lag"]}
    assert lag[0] == {
        "partition": 0,
        "end_offset": SOL_RECORDS,
        "committed": SOL_INDEXED,
        "lag": SOL_RECORDS - SOL_INDEXED,
    }
    assert lag[1]["lag"] == 0 and health["lag_total"] == SOL_RECORDS - SOL_INDEXED
    assert health["dead_letters_last_hour"] == 2
    from quoteflow.liveview.service import epoch_ms

    expected_age = before - epoch_ms(pipeline_data["sol"][-1]["received_at"]) / 1000
    assert expected_age - 1 < health["tick_age_s"][SOL] < expected_age + 5
    assert "error" not in health["airflow"], health["airflow"]


@pytest.fixture
def indexer_runs(airflow_db: Path):
    """Two quotes_indexer runs in the metadata DB, newer than any other: a finished window and the next, running."""
    from datetime import UTC, datetime, timedelta

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunType
    from sqlalchemy import delete

    end = datetime.now(UTC).replace(microsecond=0) + timedelta(days=365)  # later than any real run in this DB
    tag = uuid.uuid4().hex[:8]
    runs = []
    for i, state in enumerate((DagRunState.SUCCESS, DagRunState.RUNNING)):
        start = end + timedelta(seconds=30 * (i - 1))
        run = DagRun(
            dag_id="quotes_indexer",
            run_id=f"scheduled__liveview-{tag}-{i}",
            run_type=DagRunType.SCHEDULED,
            state=state,
            logical_date=start,
            data_interval=(start, start + timedelta(seconds=30)),
            run_after=start + timedelta(seconds=30),
            start_date=start + timedelta(seconds=31),
        )
        run.end_date = start + timedelta(seconds=35) if state == DagRunState.SUCCESS else None
        runs.append(run)
    with create_session() as session:
        session.add_all(runs)
    yield [r.run_id for r in runs], end
    with create_session() as session:
        session.execute(delete(DagRun).where(DagRun.run_id.in_([r.run_id for r in runs])))


def test_health_reports_the_last_indexer_window_from_airflow(client, pipeline_data, indexer_runs) -> None:
    test_client, token = client
    (finished_id, running_id), end = indexer_runs
    resp = test_client.get("/quotes-view/api/health", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    airflow = resp.json()["airflow"]
    assert airflow["indexer_last_finished"]["run_id"] == finished_id
    assert airflow["indexer_last_finished"]["state"] == "success"
    assert airflow["indexer_last_finished"]["data_interval_end"] == end.isoformat()
    assert airflow["indexer_latest"]["run_id"] == running_id
    assert airflow["indexer_latest"]["state"] == "running"


def test_bad_range_is_a_422_naming_the_format(client, pipeline_data) -> None:
    test_client, token = client
    resp = test_client.get(
        f"/quotes-view/api/chart?symbol={SOL}&range=soon", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 422 and "15m" in resp.json()["detail"]


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unreachable(monkeypatch):
    """Point one connection at a loopback port nobody listens on; close the view made for it afterwards."""
    port = _closed_port()

    def point(conn_id: str) -> int:
        if conn_id == "kafka_default":
            conn = {"conn_type": "kafka", "extra": {"bootstrap.servers": f"127.0.0.1:{port}"}}
        else:
            conn = {"conn_type": "elasticsearch", "host": "127.0.0.1", "port": port, "schema": "http"}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        return port

    yield point
    views = sys.modules["quotes_view_plugin"]._views  # the plugin as Airflow's plugin manager loaded it
    for key in [k for k in views if f":{port}" in k[0] + k[1]]:
        views.pop(key).close()


def _timed_get(test_client, path: str, token: str):
    started = time.monotonic()
    resp = test_client.get(path, headers={"Authorization": f"Bearer {token}"})
    return resp, time.monotonic() - started


def test_elasticsearch_unreachable_is_a_503_naming_it(client, pipeline_data, unreachable) -> None:
    test_client, token = client
    port = unreachable("elasticsearch_default")
    for route in API_ROUTES:
        resp, took = _timed_get(test_client, f"/quotes-view{route}", token)
        assert resp.status_code == 503, f"{route}: {resp.status_code} {resp.text[:200]}"
        detail = resp.json()["detail"]
        assert f"Elasticsearch at http://127.0.0.1:{port} did not answer" in detail, detail
        assert int(resp.headers["retry-after"]) >= 1 and took < 3, (route, took, resp.headers)


def test_kafka_unreachable_is_a_503_for_health_and_flagged_next_to_the_indexed_data(
    client, pipeline_data, unreachable
) -> None:
    test_client, token = client
    port = unreachable("kafka_default")
    resp, took = _timed_get(test_client, "/quotes-view/api/health", token)
    assert resp.status_code == 503, resp.text
    assert f"Kafka at 127.0.0.1:{port} did not answer" in resp.json()["detail"] and took < 3, (took, resp.text)
    # Chart and latest still show what Elasticsearch has, and say that Kafka is missing.
    resp, took = _timed_get(test_client, f"/quotes-view/api/latest?symbol={SOL}", token)
    assert resp.status_code == 200 and took < 3, (took, resp.text)
    sol = resp.json()["latest"][SOL]
    assert sol["from"] == "elasticsearch" and sol["quote"]["offset"] == pipeline_data["sol"][SOL_INDEXED - 1]["offset"]
    assert f"Kafka at 127.0.0.1:{port}" in sol["kafka_error"], sol
    resp, took = _timed_get(test_client, f"/quotes-view/api/chart?symbol={SOL}", token)
    assert resp.status_code == 200 and took < 3 and f"Kafka at 127.0.0.1:{port}" in resp.json()["kafka_error"]
    assert resp.json()["indexed_points"] == len(resp.json()["t"]) > 0
    resp, took = _timed_get(test_client, f"/quotes-view{CANDLES}", token)
    assert resp.status_code == 200 and took < 3 and f"Kafka at 127.0.0.1:{port}" in resp.json()["kafka_error"]


def on_kafka_error(error: object) -> None:
    """A callback a Kafka connection may name (importable, so the provider's hook can resolve it)."""


def test_the_kafka_connection_goes_through_the_providers_hook_and_its_callback_allowlist(
    client, pipeline_data, kafka_bootstrap, monkeypatch
) -> None:
    test_client, token = client
    callback = f"{__name__}.on_kafka_error"
    conn = {"conn_type": "kafka", "extra": {"bootstrap.servers": kafka_bootstrap, "error_cb": callback}}
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_DEFAULT", json.dumps(conn))
    monkeypatch.delenv("AIRFLOW__APACHE_KAFKA__CALLBACK_ALLOWLIST", raising=False)
    resp = test_client.get("/quotes-view/api/symbols", headers={"Authorization": f"Bearer {token}"})
    # The provider's refusal (a plain librdkafka dict would have passed the name on as a string).
    assert resp.status_code == 503, resp.text
    assert "'kafka_default'" in resp.json()["detail"]
    assert f"Refusing to resolve Kafka callback error_cb={callback!r}" in resp.json()["detail"]
    monkeypatch.setenv("AIRFLOW__APACHE_KAFKA__CALLBACK_ALLOWLIST", callback)
    resp = test_client.get("/quotes-view/api/symbols", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
