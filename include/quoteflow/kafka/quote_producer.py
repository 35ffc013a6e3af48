"""The quotes Kafka producer: idempotent, batched, keyed by symbol, never a flush per message.

``send`` hands a record to librdkafka and serves delivery callbacks with ``poll(0)``; failed
deliveries are counted and raised as :class:`DeliveryFailed` after the final ``close()`` flush,
so a run either delivered everything it reports or says loudly that it did not.

A record Kafka refuses for its size (``MSG_SIZE_TOO_LARGE``, from ``produce()`` against the
producer's ``message.max.bytes`` or from the broker against the topic's ``max.message.bytes``) is
different: retrying can never deliver it, so it is counted as :attr:`QuoteProducer.too_large` and
logged (the first one with its key and size, then one line per minute at most), and the run goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quoteflow.kafka.clients import produce_bounded, producer_config
from quoteflow.quotes import SCHEMA_HEADER
from quoteflow.settings import ConfigError

logger = logging.getLogger(__name__)

# Only failures come back as callbacks: no Python call per delivered record on the hot path.
_ONLY_ERRORS = {"delivery.report.only.error": True}
_HEADERS = [SCHEMA_HEADER]
MSG_SIZE_TOO_LARGE = 10  # KafkaError.MSG_SIZE_TOO_LARGE, local and broker-side alike
# Room for a record batch's header and one record's framing under the topic's max.message.bytes.
RECORD_BATCH_OVERHEAD = 256
LIBRDKAFKA_MIN_MESSAGE_MAX_BYTES = 1000
TOO_LARGE_LOG_INTERVAL_S = 60.0


class KafkaProducerError(Exception):
    """Base of the producer's errors."""


class DeliveryFailed(KafkaProducerError):
    """Some records were not delivered; ``failed`` counts them, ``first_error`` says why."""

    def __init__(self, failed: int, first_error: str) -> None:
        super().__init__(f"{failed} record(s) not delivered to Kafka; first error: {first_error}")
        self.failed = failed
        self.first_error = first_error


@dataclass
class TopicCounts:
    """What one side stream (bars, gaps) of the producer sent, lost, and could never send for its size."""

    sent: int = 0
    failed: int = 0
    too_large: int = 0


class ProducerFatalError(KafkaProducerError):
    """librdkafka raised a fatal error (e.g. the idempotent producer lost its sequence); the run must stop."""


class QuoteProducer:
    """Produces Quote values to one topic; create it lazily with :meth:`open`, finish with :meth:`close`."""

    def __init__(self, config: Mapping[str, Any], topic: str, *, topic_max_bytes: int | None = None) -> None:
        """Validate the config now; connect later.

        ``topic_max_bytes`` is the topic's ``max.message.bytes``. librdkafka does not split a batch the
        broker refuses as too large, so every record in it would be lost with the one big record; capping
        ``message.max.bytes`` and ``batch.size`` below the topic's limit keeps batches acceptable and makes
        ``produce()`` itself refuse (and us count) just the record that can never fit.
        """
        if not topic:
            raise ConfigError("no Kafka topic given")
        self.config = producer_config(config)
        if topic_max_bytes is not None:
            limit = max(LIBRDKAFKA_MIN_MESSAGE_MAX_BYTES, topic_max_bytes - RECORD_BATCH_OVERHEAD)
            self.config["message.max.bytes"] = min(int(self.config.get("message.max.bytes", 1_000_000)), limit)
            self.config["batch.size"] = min(int(self.config["batch.size"]), self.config["message.max.bytes"])
        self.topic = topic
        self.sent = 0
        self.failed = 0
        self.too_large = 0
        self.first_error: str | None = None
        self._next_too_large_log = 0.0
        self._producer: Any = None
        self._kafka_exception: type[Exception] = Exception
        self._fatal: str | None = None
        self._closed = False
        self.abort: threading.Event | None = None
        # Side streams (bars, gaps) share this producer (one idempotent session, one flush): counted per topic.
        self.others: dict[str, TopicCounts] = {}

    def open(self) -> QuoteProducer:
        """Create the librdkafka producer (once)."""
        if self._producer is None:
            from confluent_kafka import KafkaException, Producer

            self._kafka_exception = KafkaException
            config = {**self.config, **_ONLY_ERRORS}
            config["error_cb"] = self._on_error
            config["on_delivery"] = self._on_delivery
            self._producer = Producer(config)
        return self

    def _on_error(self, error: Any) -> None:
        if error.fatal():
            self._fatal = str(error)
            logger.error("Kafka fatal error: %s", error)
        else:
            # Broker down, DNS, etc.: librdkafka retries on its own; say so once per event.
            logger.warning("Kafka client error (retrying): %s", error)

    def _on_delivery(self, error: Any, message: Any) -> None:
        if error is None:
            return
        other = self.others.get(message.topic()) if self.others else None
        if other is not None:
            if error.code() == MSG_SIZE_TOO_LARGE:
                other.too_large += 1
                logger.error("a record for %s is too large for topic %s: %s", message.key(), message.topic(), error)
            else:
                other.failed += 1
            if other.failed == 1 and error.code() != MSG_SIZE_TOO_LARGE:
                logger.error("Kafka delivery to %s failed: %s", message.topic(), error)
            if self.first_error is None and error.code() != MSG_SIZE_TOO_LARGE:
                self.first_error = f"{message.topic()}: {error}"
            return
        if error.code() == MSG_SIZE_TOO_LARGE:
            self._too_large(message.key(), len(message.value() or b""), f"the broker refused it: {error.str()}")
            return
        self.failed += 1
        if self.first_error is None:
            self.first_error = str(error)
            logger.error("Kafka delivery failed: %s", error)

    def send(self, key: bytes, value: bytes) -> None:
        """Queue one record (key = symbol) and serve callbacks; waits only while the local queue is full.

        That wait is the back-pressure of a broker outage; it ends when librdkafka frees room, on a
        fatal error, or when :attr:`abort` is set (a stop request), in which case the record counts
        as failed and :meth:`close` reports it.
        """
        try:
            queued = produce_bounded(self._producer, self.topic, value, key, _HEADERS, None, self.abort, self.poll)
        except self._kafka_exception as exc:
            error: Any = exc.args[0] if exc.args else None
            if error is None or error.code() != MSG_SIZE_TOO_LARGE:
                raise
            self.sent += 1
            self._too_large(key, len(value), f"the producer refused it: {error.str()}")
            return
        self.sent += 1
        if not queued:
            self.failed += 1
            if self.first_error is None:
                self.first_error = "local queue still full when the stop was requested (is Kafka down?)"
            return
        self._producer.poll(0)

    def send_to(self, topic: str, key: bytes, value: bytes, headers: Any) -> None:
        """Queue one record of a side stream (a bar, a gap event) through the same bounded produce loop."""
        counts = self.others.get(topic)
        if counts is None:
            counts = self.others[topic] = TopicCounts()
        try:
            queued = produce_bounded(self._producer, topic, value, key, headers, None, self.abort, self.poll)
        except self._kafka_exception as exc:
            error: Any = exc.args[0] if exc.args else None
            if error is None or error.code() != MSG_SIZE_TOO_LARGE:
                raise
            counts.sent += 1
            counts.too_large += 1
            logger.error("a %d-byte record is too large for topic %s: %s", len(value), topic, error.str())
            return
        counts.sent += 1
        if not queued:
            counts.failed += 1
            if self.first_error is None:
                self.first_error = "local queue still full when the stop was requested (is Kafka down?)"
            return
        self._producer.poll(0)

    def delivered_to(self, topic: str) -> int:
        """Records of a side stream the broker acknowledged (exact once :meth:`close` has flushed)."""
        counts = self.others.get(topic)
        if counts is None:
            return 0
        pending = self.in_flight if not self._closed else 0
        return max(0, counts.sent - counts.failed - counts.too_large - pending)

    def _too_large(self, key: bytes | None, size: int, why: str) -> None:
        """Count a record Kafka will never take for its size; log the first, then at most one line a minute."""
        self.too_large += 1
        now = time.monotonic()
        if self.too_large == 1:
            logger.error(
                "a %d-byte record for %s is too large for topic %s (%s); counted as too_large and skipped, the "
                "run goes on. Raise the topic's max.message.bytes (and the producer's message.max.bytes in the "
                "kafka connection's extra) if records this large are expected",
                size,
                (key or b"").decode("utf-8", "replace")[:100],
                self.topic,
                why,
            )
            self._next_too_large_log = now + TOO_LARGE_LOG_INTERVAL_S
        elif now >= self._next_too_large_log:
            logger.error(
                "%d record(s) too large for topic %s so far (latest %d bytes)", self.too_large, self.topic, size
            )
            self._next_too_large_log = now + TOO_LARGE_LOG_INTERVAL_S

    def poll(self) -> None:
        """Serve delivery callbacks without waiting (call it when idle); raise on a fatal error."""
        if self._producer is not None:
            self._producer.poll(0)
        if self._fatal:
            raise ProducerFatalError(self._fatal)

    @property
    def in_flight(self) -> int:
        """Records handed to librdkafka and not yet acknowledged (nor failed)."""
        if self._producer is None or self._closed:
            return 0
        return len(self._producer)

    @property
    def delivered(self) -> int:
        """Records the broker acknowledged: everything sent that neither failed, was too large, nor is still queued.

        While side streams share the queue, ``in_flight`` counts their records too, so this is a lower bound
        until :meth:`close`; after it, exact.
        """
        return max(0, self.sent - self.failed - self.too_large - self.in_flight)

    def close(self, timeout: float = 30.0) -> None:
        """Flush what is queued (up to ``timeout`` s); raise :class:`DeliveryFailed` if anything was lost."""
        if self._producer is None:
            return
        deadline = time.monotonic() + timeout
        remaining = self._producer.flush(timeout)
        while remaining and time.monotonic() < deadline:
            remaining = self._producer.flush(max(0.0, deadline - time.monotonic()))
        if remaining:
            # Still queued when the budget ran out: purge them so each is reported (and counted) as failed.
            if self.first_error is None:
                self.first_error = f"{remaining} record(s) still queued after a {timeout:.0f} s flush"
            self._producer.purge(in_queue=True, in_flight=True, blocking=False)
            self._producer.poll(0.5)
            self.failed += len(self._producer)  # any the purge did not report yet
        self._closed = True
        if self._fatal and self.first_error is None:
            self.first_error = self._fatal
        lost = self.failed + sum(c.failed for c in self.others.values())
        if lost:
            raise DeliveryFailed(lost, self.first_error or "unknown")
