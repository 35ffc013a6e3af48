"""quotes_producer: its shape, a dag.test() run against the local feed, a clean stop via on_kill, and
configuration errors that fail the task once instead of being retried."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from quoteflow.tradingview.feed_server import FeedConfig, FeedServer, synthetic_universe
from tests.helpers.producing import LOG_APPEND, read_topic, volumes_by_symbol

DAGS = Path(__file__).resolve().parents[2] / "dags"
SYMBOLS = synthetic_universe(3)


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / "quotes_producer.py"))
    assert bag.import_errors == {}
    return bag.dags["quotes_producer"]


@pytest.fixture
def fast_tradingview_conn(monkeypatch):
    """Short client intervals through the optional tradingview_default connection's extra."""
    extra = {"poll_interval": 0.1, "watchdog_timeout": 3.0, "backoff_initial": 0.1, "backoff_cap": 0.5}
    monkeypatch.setenv("AIRFLOW_CONN_TRADINGVIEW_DEFAULT", json.dumps({"conn_type": "generic", "extra": extra}))


@pytest.fixture
def feed_server():
    server = FeedServer(
        FeedConfig(synthetic_symbols=3, rate=300, packets_per_message=3, heartbeat_interval=0.5, seed=3)
    ).start()
    yield server
    server.stop()


def test_dag_is_continuous_single_run_with_typed_titled_params(dag):
    from airflow.sdk import BaseOperator

    assert type(dag.timetable).__name__ == "ContinuousTimetable"
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert {"quoteflow", "producer"} <= set(dag.tags)
    (task,) = dag.tasks
    assert task.retries >= 2 and task.retry_exponential_backoff
    assert type(task).on_kill is not BaseOperator.on_kill
    params = dag.params
    assert params["symbols"] == ["BINANCE:SOLUSDT", "BINANCE:BTCUSDT", "BINANCE:ETHUSDT"]
    assert params["max_runtime_minutes"] == 60
    assert params["topic"] == "quotes.tradingview"
    assert params["url"].startswith("wss://data.tradingview.com")
    for name in ("symbols", "max_runtime_minutes", "topic", "url"):
        schema = params.get_param(name).schema
        assert schema.get("title") and schema.get("type"), name


def test_dag_test_streams_into_kafka_and_returns_its_summary(dag, feed_server, make_topic, kafka_bootstrap,
                                                             fast_tradingview_conn):  # fmt: skip
    topic = make_topic(1, LOG_APPEND)
    started = time.monotonic()
    run = dag.test(run_conf={"max_runtime_minutes": 0.05, "url": feed_server.url, "topic": topic, "symbols": SYMBOLS})
    elapsed = time.monotonic() - started
    assert run.state == "success"
    assert elapsed < 30
    ti = next(ti for ti in run.get_task_instances() if ti.task_id == "produce_quotes")
    assert ti.state == "success"
    summary = ti.xcom_pull(task_ids="produce_quotes", key="return_value")
    assert summary["stopped_by"] == "max_seconds"
    assert 2.5 <= summary["seconds"] <= 6.0
    assert summary["quotes"] > 100 and summary["reconnects"] == 0 and summary["errors"] == {}
    records = read_topic(kafka_bootstrap, topic, expect=summary["quotes"])
    assert len(records) == summary["quotes"]
    for symbol, seen in volumes_by_symbol(records).items():
        assert seen == [float(i) for i in range(1, len(seen) + 1)], symbol


def test_on_kill_flushes_and_returns_within_5_seconds(dag, feed_server, make_topic, kafka_bootstrap,
                                                      fast_tradingview_conn):  # fmt: skip
    from airflow.dag_processing.dagbag import DagBag

    topic = make_topic(1, LOG_APPEND)
    # A DAG of its own: on_kill leaves the operator's stop flag set, which must not stop later tests' runs.
    task = DagBag(dag_folder=str(DAGS / "quotes_producer.py")).dags["quotes_producer"].get_task("produce_quotes")
    context = {"params": {"max_runtime_minutes": 10, "url": feed_server.url, "topic": topic, "symbols": SYMBOLS}}
    result: dict = {}

    def execute():
        result["summary"] = task.execute(context)
        result["returned_at"] = time.monotonic()

    worker = threading.Thread(target=execute)
    worker.start()
    time.sleep(2.5)
    assert worker.is_alive()
    killed_at = time.monotonic()
    task.on_kill()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert result["returned_at"] - killed_at < 5.0
    summary = result["summary"]
    assert summary["stopped_by"] == "stop_request"
    assert summary["quotes"] == summary["quotes_sent"] > 100  # everything queued was delivered by the flush
    assert len(read_topic(kafka_bootstrap, topic, expect=summary["quotes"])) == summary["quotes"]


def _only_try(run):
    """The produce_quotes task instance of a finished run, after asserting the run failed."""
    assert str(run.state) == "failed"
    (ti,) = [ti for ti in run.get_task_instances() if ti.task_id == "produce_quotes"]
    return ti


def test_a_token_bound_for_a_foreign_host_fails_once_without_retrying(dag, monkeypatch, capfd):
    conn = {"conn_type": "generic", "password": "user-token-xyz", "extra": {"backoff_cap": 0.5}}
    monkeypatch.setenv("AIRFLOW_CONN_TRADINGVIEW_DEFAULT", json.dumps(conn))
    started = time.monotonic()
    run = dag.test(run_conf={"url": "wss://data.tradingview.com.evil.example/socket.io/websocket"})
    log = "".join(capfd.readouterr())  # the task's log, as Airflow's task runner writes it
    ti = _only_try(run)
    assert str(ti.state) == "failed" and ti.try_number == 1  # not up_for_retry: no second try follows
    assert time.monotonic() - started < 60  # a retry would wait out retry_delay (15 s, then 30 s, ...)
    assert "refusing to send the TradingView auth token" in log
    assert "wss://data.tradingview.com.evil.example:443" in log
    assert "host of connection 'tradingview_default'" in log and "remove the password" in log
    assert "user-token-xyz" not in log


def test_every_symbol_refused_fails_once_without_retrying(dag, feed_server, make_topic, fast_tradingview_conn, capfd):
    topic = make_topic(1, LOG_APPEND)
    run = dag.test(run_conf={"url": feed_server.url, "topic": topic, "symbols": ["NOPE:NOSUCH", "NOPE:OTHER"]})
    log = "".join(capfd.readouterr())
    ti = _only_try(run)
    assert str(ti.state) == "failed" and ti.try_number == 1
    assert "TradingView refused every symbol" in log and "fix the symbol list" in log
    assert feed_server.stats.connections == 1  # one try, one connection: no reconnect loop either


def test_a_missing_topic_fails_once_without_retrying(dag, feed_server, fast_tradingview_conn, capfd):
    run = dag.test(run_conf={"url": feed_server.url, "topic": "quotes.no-such-topic.producer-dag-test"})
    log = "".join(capfd.readouterr())
    ti = _only_try(run)
    assert str(ti.state) == "failed" and ti.try_number == 1
    assert "does not exist" in log
    assert feed_server.stats.connections == 0  # refused before any data moved
