"""The Kafka side of the producer against the real broker: delivery, loud failures, early config errors."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quoteflow.kafka.quote_producer import DeliveryFailed, QuoteProducer
from quoteflow.settings import ConfigError
from quoteflow.stream import ProducerRun, client_config, run_producer
from tests.helpers.producing import LOG_APPEND, read_topic

ROOT = Path(__file__).resolve().parents[2]


def test_records_are_keyed_by_symbol_with_the_schema_header(make_topic, kafka_bootstrap):
    topic = make_topic(1, LOG_APPEND)
    producer = QuoteProducer({"bootstrap.servers": kafka_bootstrap}, topic).open()
    for i in range(1000):
        producer.send(b"BINANCE:SOLUSDT" if i % 2 else b"BINANCE:BTCUSDT", json.dumps({"i": i}).encode())
    producer.close(10)
    assert producer.delivered == producer.sent == 1000 and producer.failed == 0
    records = read_topic(kafka_bootstrap, topic, expect=1000)
    assert [json.loads(r.value())["i"] for r in records] == list(range(1000))
    assert {r.key() for r in records} == {b"BINANCE:SOLUSDT", b"BINANCE:BTCUSDT"}
    assert all(r.headers() == [("schema", b"quote.v1")] for r in records)


def test_undeliverable_records_raise_a_named_error_after_the_final_flush():
    with socket.socket() as sock:  # a port nothing listens on: the broker is unreachable for real
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    producer = QuoteProducer({"bootstrap.servers": dead, "message.timeout.ms": 800}, "quotes.tradingview").open()
    for _ in range(5):
        producer.send(b"BINANCE:SOLUSDT", b"{}")  # no flush here, and no exception either
    started = time.monotonic()
    with pytest.raises(DeliveryFailed) as err:
        producer.close(10)
    assert err.value.failed == 5
    assert "timed out" in err.value.first_error.lower()
    assert time.monotonic() - started < 10


def test_missing_topic_is_a_config_error_before_any_data_moves(kafka_bootstrap):
    run = ProducerRun(
        client=client_config("ws://127.0.0.1:9", ["BINANCE:SOLUSDT"]),
        kafka={"bootstrap.servers": kafka_bootstrap},
        topic="quotes.does-not-exist.producer-test",
        max_seconds=1,
    )
    with pytest.raises(ConfigError, match="does not exist"):
        run_producer(run)


def test_createtime_topic_is_refused_with_the_fix(make_topic, kafka_bootstrap):
    topic = make_topic(1, {"message.timestamp.type": "CreateTime"})
    run = ProducerRun(
        client=client_config("ws://127.0.0.1:9", ["BINANCE:SOLUSDT"]),
        kafka={"bootstrap.servers": kafka_bootstrap},
        topic=topic,
        max_seconds=1,
    )
    with pytest.raises(ConfigError, match="LogAppendTime"):
        run_producer(run)


def test_produce_command_exits_0_at_max_seconds_even_with_no_feed(make_topic, kafka_bootstrap):
    topic = make_topic(1, LOG_APPEND)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "quoteflow", "produce", "--url", f"ws://127.0.0.1:{port}/socket.io/websocket",
         "--symbols", "BINANCE:SOLUSDT", "--topic", topic, "--bootstrap", kafka_bootstrap, "--max-seconds", "3",
         "--backoff-initial", "0.2", "--backoff-cap", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.monotonic() - started < 20
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["quotes"] == 0 and summary["stopped_by"] == "max_seconds"
    assert 2 <= summary["errors"]["connect_failed"] <= 30  # retried with backoff, not in a tight loop
    assert summary["reconnects"] >= 2


def test_produce_command_without_kafka_config_says_what_to_set():
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_CONN_KAFKA_DEFAULT"}
    proc = subprocess.run(
        [sys.executable, "-m", "quoteflow", "produce", "--url", "ws://127.0.0.1:9", "--max-seconds", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**env, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--bootstrap" in proc.stderr and "AIRFLOW_CONN_KAFKA_DEFAULT" in proc.stderr


def test_serve_feed_command_serves_the_protocol():
    import websocket

    from quoteflow.tradingview.protocol import decode_message, encode_packet

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "quoteflow", "serve-feed", "--port", str(port), "--synthetic",
         "--symbols", "3", "--rate", "100", "--heartbeat-interval", "0.5"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = json.loads(proc.stdout.readline())["listening"]
        ws = websocket.create_connection(url, timeout=5)
        kinds = [p.kind for p in decode_message(ws.recv()).packets]
        assert kinds == ["hello"]
        ws.send(encode_packet("set_auth_token", ["unauthorized_user_token"]))
        ws.send(encode_packet("quote_create_session", ["qs_cli"]))
        ws.send(encode_packet("quote_add_symbols", ["qs_cli", "BINANCE:SOLUSDT"]))
        methods: list[str] = []
        while "qsd" not in methods or "heartbeat" not in methods:
            methods += [p.method or p.kind for p in decode_message(ws.recv()).packets]
        assert methods[0] == "quote_completed"
        ws.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0
    assert json.loads(proc.stdout.read().strip().splitlines()[-1])["connections"] == 1


def test_produce_command_stops_within_5_seconds_of_sigterm_with_everything_flushed(make_topic, kafka_bootstrap):
    import signal

    from quoteflow.tradingview.feed_server import synthetic_universe
    from tests.helpers.producing import feed

    topic = make_topic(1, LOG_APPEND)
    with feed(synthetic_symbols=3, rate=2000, packets_per_message=10) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "quoteflow", "produce", "--url", server.url,
             "--symbols", ",".join(synthetic_universe(3)), "--topic", topic, "--bootstrap", kafka_bootstrap,
             "--max-seconds", "120"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while server.stats.messages_sent < 100 and time.monotonic() < deadline:
            time.sleep(0.1)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        stopped_in = time.monotonic() - signalled
    assert proc.returncode == 0, err[-2000:]
    assert stopped_in < 5.0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stopped_by"] == "stop_request"
    assert summary["quotes"] == summary["quotes_sent"] >= 1000
    assert len(read_topic(kafka_bootstrap, topic, expect=summary["quotes"])) == summary["quotes"]


def test_stop_is_not_held_up_by_a_full_queue_while_kafka_is_unreachable():
    """Back-pressure from a tiny queue and a dead broker must still yield to a stop request."""
    import threading

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    producer = QuoteProducer(
        {"bootstrap.servers": dead, "queue.buffering.max.messages": 10, "message.timeout.ms": 60_000}, "t"
    ).open()
    producer.abort = threading.Event()
    for _ in range(10):
        producer.send(b"k", b"{}")
    threading.Timer(0.5, producer.abort.set).start()
    started = time.monotonic()
    producer.send(b"k", b"{}")  # the queue is full: this waits until the stop request
    waited = time.monotonic() - started
    assert 0.4 <= waited < 2.0
    producer.send(b"k", b"{}")  # after the stop, further records fail at once instead of waiting
    assert time.monotonic() - started < 2.0
    with pytest.raises(DeliveryFailed) as err:
        producer.close(1.0)
    assert err.value.failed == 12 and producer.delivered == 0


# -------------------------------------------------------------- records too large for the topic


def _incompressible(size: int) -> bytes:
    """A JSON value of about ``size`` bytes that lz4 cannot shrink, so its batch is really that large."""
    return json.dumps({"pad": os.urandom(size // 2).hex()}).encode()


def _too_large_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "quoteflow.kafka.quote_producer"]


def test_a_record_too_large_for_the_topic_is_counted_logged_once_and_the_rest_delivered(
    make_topic, kafka_bootstrap, caplog
):
    from quoteflow.kafka.admin import check_topic

    topic = make_topic(1, {**LOG_APPEND, "max.message.bytes": "4096"})
    config = {"bootstrap.servers": kafka_bootstrap}
    topic_max = check_topic(config, topic)
    assert topic_max == 4096
    producer = QuoteProducer(config, topic, topic_max_bytes=topic_max).open()
    expected = []
    with caplog.at_level(logging.INFO, logger="quoteflow"):
        for i in range(1500):
            value = _incompressible(3400 if i % 100 == 7 else 300)  # near the limit, yet under it
            producer.send(b"BINANCE:SOLUSDT", value)
            expected.append(value)
            if i % 500 == 250:
                producer.send(b"BINANCE:SOLUSDT", _incompressible(6000))  # can never fit
        producer.close(20)  # no DeliveryFailed: a record that can never fit is not a delivery failure
    assert (producer.too_large, producer.failed, producer.delivered) == (3, 0, 1500)
    assert [r.value() for r in read_topic(kafka_bootstrap, topic, expect=1500)] == expected  # none lost, in order
    lines = _too_large_lines(caplog)
    assert len(lines) == 1, lines  # logged once, not once per record
    assert "too large for topic" in lines[0] and "counted as too_large" in lines[0]
    assert "max.message.bytes" in lines[0] and "BINANCE:SOLUSDT" in lines[0]


def test_a_batch_the_broker_refuses_for_size_is_counted_not_raised(make_topic, kafka_bootstrap, caplog):
    """Without the topic's limit, librdkafka batches past it and the broker refuses: counted, never a crash."""
    topic = make_topic(1, {**LOG_APPEND, "max.message.bytes": "4096"})
    producer = QuoteProducer({"bootstrap.servers": kafka_bootstrap}, topic).open()
    with caplog.at_level(logging.INFO, logger="quoteflow"):
        producer.send(b"BINANCE:SOLUSDT", _incompressible(8000))
        producer.close(20)  # the broker's MSG_SIZE_TOO_LARGE arrives in the delivery report
        after = QuoteProducer({"bootstrap.servers": kafka_bootstrap}, topic).open()
        after.send(b"BINANCE:SOLUSDT", b'{"after":1}')  # the topic still takes what fits
        after.close(20)
    assert (producer.too_large, producer.failed, producer.delivered) == (1, 0, 0)
    assert after.delivered == 1 and [r.value() for r in read_topic(kafka_bootstrap, topic, expect=1)] == [
        b'{"after":1}'
    ]
    lines = _too_large_lines(caplog)
    assert len(lines) == 1 and "the broker refused it" in lines[0], lines
