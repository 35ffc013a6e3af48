"""Every Kafka client quoteflow makes: producer, consumer and admin configs, built here and nowhere else.

One Kafka connection (``kafka_default``) serves all of them, so its extra may hold consumer-only
keys (``group.id`` …) that mean nothing to a producer or an admin client: :data:`CONSUMER_ONLY_KEYS`
names them once. :func:`consumer` closes its consumer without hiding the error that ended the block,
and :func:`produce_bounded` is the one produce loop: it waits while librdkafka's local queue is full
(one policy: serve callbacks for :data:`FULL_QUEUE_POLL_S`, try again) and gives up when asked to stop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from quoteflow.settings import ConfigError

logger = logging.getLogger(__name__)

CONSUMER_ONLY_KEYS = frozenset(
    {
        "group.id",
        "auto.offset.reset",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "enable.partition.eof",
        "isolation.level",
    }
)
# Safe, fast defaults for producers; a connection's extra may override these tuning ones.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 500_000,
    "queue.buffering.max.kbytes": 262_144,
    "message.timeout.ms": 300_000,
    # Come back quickly after a broker restart instead of librdkafka's 10 s reconnect ceiling.
    "reconnect.backoff.max.ms": 2_000,
    "client.id": "quoteflow-producer",
}
# ... never these: every quoteflow producer is idempotent and waits for all in-sync replicas.
PRODUCER_REQUIRED: dict[str, Any] = {"enable.idempotence": True, "acks": "all"}
# While the local queue is full: serve callbacks this long, then try again (or stop, if asked to).
FULL_QUEUE_POLL_S = 0.05


def shared_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The connection's settings without the consumer-only keys: what a producer or admin client may use."""
    return {k: v for k, v in config.items() if k not in CONSUMER_ONLY_KEYS}


def producer_config(config: Mapping[str, Any], defaults: Mapping[str, Any] = PRODUCER_DEFAULTS) -> dict[str, Any]:
    """``defaults``, then the connection's settings, then the settings quoteflow requires for exactly-once order."""
    out: dict[str, Any] = {**defaults, **shared_config(config)}
    for key, value in PRODUCER_REQUIRED.items():
        given = out.get(key)
        if given is not None and str(given).lower() not in (str(value).lower(), "-1" if key == "acks" else "true"):
            raise ConfigError(f"producer setting {key}={given!r} is not allowed; quoteflow needs {key}={value}")
        out[key] = value
    if not out.get("bootstrap.servers"):
        raise ConfigError("producer config has no bootstrap.servers; set it in the kafka_default connection's extra")
    return out


def consumer_config(config: Mapping[str, Any], group_id: str, **overrides: Any) -> dict[str, Any]:
    """A reading-only consumer config: explicit group, no auto-commit, no auto offset store, fail on lost offsets."""
    out = dict(config)
    out.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # An assigned offset that retention removed must be an error, not a silent jump.
            "auto.offset.reset": "error",
            "enable.partition.eof": False,
        }
    )
    out.update(overrides)
    return out


def make_consumer(config: Mapping[str, Any], group_id: str, **overrides: Any) -> Any:
    """A confluent-kafka ``Consumer`` for explicit-offset reads under ``group_id`` (the caller closes it)."""
    from confluent_kafka import Consumer

    return Consumer(consumer_config(config, group_id, **overrides))


def admin_client(config: Mapping[str, Any]) -> Any:
    """An ``AdminClient`` from a connection's librdkafka config (consumer-only keys dropped)."""
    from confluent_kafka.admin import AdminClient

    return AdminClient(shared_config(config))


def close_after(resource: Any, failing: bool, what: str) -> None:
    """Close ``resource``; a close error is raised only if nothing else is already failing, else logged."""
    from confluent_kafka import KafkaException

    try:
        resource.close()
    except (KafkaException, RuntimeError) as exc:
        if not failing:
            raise
        logger.warning("closing %s after an earlier error also failed: %s", what, exc)


@contextmanager
def consumer(config: Mapping[str, Any], group_id: str, **overrides: Any) -> Iterator[Any]:
    """A reading-only consumer for the ``with`` block; closed after it without masking the block's own error."""
    client = make_consumer(config, group_id, **overrides)
    try:
        yield client
    except BaseException:
        close_after(client, True, f"the Kafka consumer of group {group_id!r}")
        raise
    close_after(client, False, f"the Kafka consumer of group {group_id!r}")


def produce_bounded(
    producer: Any,
    topic: str,
    value: bytes | None,
    key: bytes | None,
    headers: Any = None,
    on_delivery: Callable[[Any, Any], None] | None = None,
    stop: threading.Event | None = None,
    check: Callable[[], None] | None = None,
) -> bool:
    """Queue one record; while the local queue is full, serve callbacks and retry. ``False`` if ``stop`` came first.

    The wait is the back-pressure of a slow or absent broker. It is bounded: librdkafka frees room as
    records are delivered or expire (``message.timeout.ms``), ``stop`` ends it at once, and ``check``
    (called after each wait) may raise, e.g. on a fatal producer error. Other produce errors propagate.
    """
    while True:
        try:
            if on_delivery is None:
                producer.produce(topic, value, key, headers=headers)
            else:
                producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
            return True
        except BufferError:
            if stop is not None and stop.is_set():
                return False
            producer.poll(FULL_QUEUE_POLL_S)
            if check is not None:
                check()
