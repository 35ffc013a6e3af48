"""Kafka configs on the DAG side come from the Kafka provider's hook, against real Airflow config and Kafka.

Connections are ``AIRFLOW_CONN_*`` JSON and the allow-list is ``AIRFLOW__APACHE_KAFKA__CALLBACK_ALLOWLIST``:
the same environment Airflow reads in ``make run`` and compose, nothing patched.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from _shared.connections import elasticsearch_args, kafka_config, kafka_hook

from quoteflow.settings import ConfigError

HERE = __name__
ON_ERROR = f"{HERE}.on_error"
ON_STATS = f"{HERE}.on_stats"
MSK_SERVERS = "b-1.demo.abcde1.c2.kafka.us-east-1.amazonaws.com:9098"


def on_error(error: Any) -> None:
    """A callback a connection may name in its extra (importable, so the provider can resolve it)."""


def on_stats(stats: str) -> None:
    """Another resolvable callback, never allow-listed."""


@pytest.fixture
def kafka_conn(monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """Define a fresh Kafka connection from an ``extra`` dict; returns its id."""

    def _define(extra: dict[str, Any]) -> str:
        conn_id = f"qf_kafka_{uuid.uuid4().hex[:8]}"
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "kafka", "extra": extra}))
        return conn_id

    return _define


def allow(monkeypatch: pytest.MonkeyPatch, *paths: str) -> None:
    monkeypatch.setenv("AIRFLOW__APACHE_KAFKA__CALLBACK_ALLOWLIST", ",".join(paths))


def test_extra_passes_through_unchanged(kafka_conn, kafka_bootstrap: str) -> None:
    extra = {"bootstrap.servers": kafka_bootstrap, "client.id": "qf-test", "socket.timeout.ms": 5000, "acks": "all"}
    assert kafka_config(kafka_conn(extra)) == extra


def test_callback_not_on_the_allowlist_is_refused(kafka_conn, kafka_bootstrap: str, monkeypatch) -> None:
    conn_id = kafka_conn({"bootstrap.servers": kafka_bootstrap, "error_cb": ON_ERROR, "stats_cb": ON_STATS})
    monkeypatch.delenv("AIRFLOW__APACHE_KAFKA__CALLBACK_ALLOWLIST", raising=False)
    with pytest.raises(ConfigError, match=r"Refusing to resolve Kafka callback error_cb=.*callback_allowlist is empty"):
        kafka_config(conn_id)
    allow(monkeypatch, ON_ERROR)  # error_cb now resolves, stats_cb still does not
    with pytest.raises(ConfigError) as refused:
        kafka_config(conn_id)
    assert conn_id in str(refused.value)
    assert f"Refusing to resolve Kafka callback stats_cb={ON_STATS!r}: it is not in the" in str(refused.value)
    assert isinstance(refused.value.__cause__, ValueError)  # the provider's own error, kept as the cause


def test_allowlisted_callbacks_resolve_to_the_functions(kafka_conn, kafka_bootstrap: str, monkeypatch) -> None:
    allow(monkeypatch, ON_ERROR, ON_STATS)
    extra = {"bootstrap.servers": kafka_bootstrap, "error_cb": ON_ERROR, "stats_cb": ON_STATS}
    config = kafka_config(kafka_conn(extra))
    assert config["error_cb"] is on_error and config["stats_cb"] is on_stats


def test_missing_bootstrap_servers_names_the_connection(kafka_conn) -> None:
    conn_id = kafka_conn({"group.id": "g"})
    with pytest.raises(ConfigError, match=rf"connection '{conn_id}' has no 'bootstrap.servers' in its extra"):
        kafka_config(conn_id)


def test_undefined_connection_says_how_to_define_it() -> None:
    with pytest.raises(ConfigError, match=r"'qf_nowhere' is not defined.*AIRFLOW_CONN_QF_NOWHERE"):
        kafka_config("qf_nowhere")


def test_amazon_msk_is_detected_the_providers_way(kafka_conn, monkeypatch) -> None:
    from airflow.providers.common.compat.sdk import AirflowOptionalProviderFeatureException

    sasl = {"bootstrap.servers": MSK_SERVERS, "security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"}
    # The provider adds its MSK IAM token callback, which needs the 'msk' extra (not installed here).
    with pytest.raises(AirflowOptionalProviderFeatureException, match="msk"):
        kafka_config(kafka_conn(sasl))
    # Without OAUTHBEARER nothing is added; an explicit, allow-listed oauth_cb is kept as given.
    assert "oauth_cb" not in kafka_config(kafka_conn({**sasl, "sasl.mechanism": "SCRAM-SHA-512"}))
    allow(monkeypatch, ON_ERROR)
    assert kafka_config(kafka_conn({**sasl, "oauth_cb": ON_ERROR}))["oauth_cb"] is on_error


def test_config_round_trips_a_record_through_the_real_broker(
    kafka_conn, kafka_bootstrap: str, make_topic, monkeypatch
) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition

    allow(monkeypatch, ON_ERROR)
    topic = make_topic()
    config = kafka_config(kafka_conn({"bootstrap.servers": kafka_bootstrap, "error_cb": ON_ERROR}))
    producer = Producer(config)
    producer.produce(topic, b"via-the-provider")
    assert producer.flush(30) == 0
    consumer = Consumer({**config, "group.id": f"qf-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    try:
        assert topic in consumer.list_topics(timeout=10).topics
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 30
        message = None
        while message is None and time.monotonic() < deadline:
            message = consumer.poll(1.0)
        assert message is not None and message.error() is None and message.value() == b"via-the-provider"
    finally:
        consumer.close()


def test_connection_test_button_is_the_providers(kafka_conn, kafka_bootstrap: str) -> None:
    from airflow.providers.apache.kafka.hooks.base import KafkaBaseHook

    # The UI's Test button runs the hook registered for conn_type "kafka": KafkaBaseHook.test_connection.
    assert KafkaBaseHook(kafka_conn({"bootstrap.servers": kafka_bootstrap})).test_connection() == (
        True,
        "Connection successful.",
    )
    assert kafka_hook(kafka_conn({"bootstrap.servers": kafka_bootstrap})).test_connection()[0] is True
    ok, message = KafkaBaseHook(kafka_conn({"bootstrap.servers": "127.0.0.1:1"})).test_connection()
    assert ok is False and message


def test_elasticsearch_args_keep_the_checked_client_args(es_client) -> None:
    from elasticsearch import Elasticsearch

    args = elasticsearch_args()
    assert args["hosts"] == [es_client.transport.node_pool.get().base_url]
    with Elasticsearch(**args) as es:
        assert es.cluster.health()["status"] in ("green", "yellow")
