"""Shared pieces of the producer integration tests: a feed server in a thread, a topic reader."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson

from quoteflow.stream import ProducerRun, client_config, run_producer
from quoteflow.tradingview.feed_server import FeedConfig, FeedServer

LOG_APPEND = {"message.timestamp.type": "LogAppendTime"}
# Intervals short enough that every fault plays out in a few seconds.
FAST_CLIENT = {
    "watchdog_timeout": 1.5,
    "backoff_initial": 0.2,
    "backoff_cap": 1.0,
    "poll_interval": 0.1,
    "connect_timeout": 3.0,
    "auth_retry_delay": 2.0,
}


@contextlib.contextmanager
def feed(**settings: Any) -> Iterator[FeedServer]:
    """A running :class:`FeedServer` on an ephemeral loopback port."""
    settings.setdefault("heartbeat_interval", 0.5)
    settings.setdefault("heartbeat_timeout", 2.0)
    server = FeedServer(FeedConfig(**settings)).start()
    try:
        yield server
    finally:
        server.stop()


def produce(
    server: FeedServer,
    symbols: list[str],
    topic: str,
    bootstrap: str,
    seconds: float,
    stop: threading.Event | None = None,
    stats_interval: float = 30.0,
    **client: Any,
) -> dict[str, Any]:
    """Run the producer against ``server`` for ``seconds`` and return its summary."""
    tuning = {**FAST_CLIENT, **client}
    record = tuning.pop("record_path", None)
    token = tuning.pop("auth_token", None)
    config = client_config(server.url, symbols, record_path=record, **tuning)
    config.auth_token = token
    run = ProducerRun(
        client=config,
        kafka={"bootstrap.servers": bootstrap},
        topic=topic,
        max_seconds=seconds,
        stats_interval=stats_interval,
    )
    return run_producer(run, stop)


def read_topic(bootstrap: str, topic: str, expect: int | None = None, idle: float = 3.0) -> list[Any]:
    """Every record of partition 0 from the beginning, until ``expect`` are read or ``idle`` s pass quietly."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"producer-test-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    records: list[Any] = []
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        last = time.monotonic()
        while time.monotonic() - last < idle and (expect is None or len(records) < expect):
            batch = consumer.consume(10_000, timeout=0.5)
            for message in batch:
                assert message.error() is None, message.error()
                records.append(message)
            if batch:
                last = time.monotonic()
    finally:
        consumer.close()
    return records


def values(records: list[Any]) -> list[dict[str, Any]]:
    """Decoded JSON values."""
    return [orjson.loads(r.value()) for r in records]


def volumes_by_symbol(records: list[Any]) -> dict[str, list[float]]:
    """The synthetic feed's per-symbol sequence numbers (its ``volume``), in topic order."""
    out: dict[str, list[float]] = {}
    for record in records:
        value = orjson.loads(record.value())
        out.setdefault(record.key().decode(), []).append(value["volume"])
    return out
