"""The producer run: TradingView client → Kafka, until a stop request or a time limit.

Used by the ``produce`` command and the ``quotes_producer`` DAG alike. The caller owns the stop
flag (a signal handler or an operator's ``on_kill`` sets it); the run notices it within the
client's poll interval, flushes Kafka within ``flush_timeout`` and returns its summary.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quoteflow.kafka.admin import check_topic
from quoteflow.kafka.quote_producer import DeliveryFailed, KafkaProducerError, QuoteProducer
from quoteflow.settings import TRADINGVIEW_URL, ConfigError, ConnectionInfo
from quoteflow.tradingview.client import DEFAULT_HEADERS, ClientConfig, TradingViewClient
from quoteflow.tradingview.session import SymbolState

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 30.0
STALEST_SHOWN = 10


@dataclass
class ProducerRun:
    """One run's settings: where to read, where to write, for how long."""

    client: ClientConfig
    kafka: Mapping[str, Any]
    topic: str
    max_seconds: float | None = None
    stats_interval: float = STATS_INTERVAL_S
    flush_timeout: float = 4.0
    check_topic: bool = True

    def __post_init__(self) -> None:
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigError(f"max_seconds must be > 0, got {self.max_seconds!r}")
        if not self.topic:
            raise ConfigError("no Kafka topic given")


class _Pump:
    """The glue between client callbacks and the Kafka producer, plus the periodic stats line."""

    def __init__(self, run: ProducerRun, producer: QuoteProducer) -> None:
        self.run = run
        self.producer = producer
        self.client: TradingViewClient | None = None
        self.started = time.monotonic()
        self.next_stats = self.started + run.stats_interval
        self.last_stats_at = self.started
        self.last_stats_sent = 0

    def on_quote(self, state: SymbolState, received_at: str) -> None:
        self.producer.send(state.key_bytes, state.to_json(received_at))

    def on_tick(self) -> None:
        self.producer.poll()
        now = time.monotonic()
        if now >= self.next_stats:
            self.log_stats(now)
            self.next_stats = now + self.run.stats_interval

    def log_stats(self, now: float) -> None:
        """One line: quotes/s since the last line, totals, reconnects, and the stalest symbols' last-tick age."""
        assert self.client is not None
        sent = self.producer.sent
        rate = (sent - self.last_stats_sent) / max(1e-9, now - self.last_stats_at)
        self.last_stats_at, self.last_stats_sent = now, sent
        ages = self.client.last_tick_ages()
        never = sorted(k for k, age in ages.items() if age is None)
        stalest = sorted(((a, k) for k, a in ages.items() if a is not None), reverse=True)[:STALEST_SHOWN]
        shown = ", ".join(f"{k}={a:.1f}s" for a, k in stalest)
        stats = self.client.stats
        heartbeat = self.client.last_heartbeat
        delayed = self.client.delayed_symbols()
        logger.info(
            "stats: %.1f quotes/s, %d sent, %d delivered, %d in flight, %d too large, %d reconnect(s), errors %s; "
            "last heartbeat %s ago; last tick age (stalest): %s; no tick yet: %d symbol(s)%s; delayed feed: %s",
            rate,
            sent,
            self.producer.delivered,
            self.producer.in_flight,
            self.producer.too_large,
            stats.reconnects,
            dict(stats.errors) or "{}",
            "-" if heartbeat is None else f"{now - heartbeat:.1f}s",
            shown or "-",
            len(never),
            f" ({', '.join(never[:STALEST_SHOWN])})" if never else "",
            ", ".join(f"{k}={m}" for k, m in sorted(delayed.items())[:STALEST_SHOWN]) or "none",
        )


def run_producer(run: ProducerRun, stop: threading.Event | None = None) -> dict[str, Any]:
    """Stream quotes into Kafka until ``stop`` is set or ``max_seconds`` pass; return the run's summary.

    Raises :class:`~quoteflow.kafka.quote_producer.DeliveryFailed` after the final flush if any
    record was not delivered (the summary is attached as ``exc.summary``).
    """
    stop = stop or threading.Event()
    topic_max_bytes = check_topic(run.kafka, run.topic) if run.check_topic else None
    producer = QuoteProducer(run.kafka, run.topic, topic_max_bytes=topic_max_bytes).open()
    producer.abort = stop  # a stop request must not wait behind a full queue while Kafka is down
    pump = _Pump(run, producer)
    client = TradingViewClient(run.client, pump.on_quote, on_tick=pump.on_tick)
    pump.client = client
    started = time.monotonic()
    deadline = started + run.max_seconds if run.max_seconds is not None else None
    logger.info(
        "producing %d symbol(s) from %s to topic %s%s",
        len(run.client.symbols),
        run.client.url,
        run.topic,
        f" for {run.max_seconds:.0f} s" if run.max_seconds else "",
    )
    try:
        client.run(stop, deadline)
    except BaseException:
        # Flush what we have, but let the first error be the one that surfaces.
        try:
            producer.close(run.flush_timeout)
        except KafkaProducerError as flush_error:
            logger.error("flush after a failed run also failed: %s", flush_error)
        raise
    stopped_at = time.monotonic()
    try:
        producer.close(run.flush_timeout)
    except DeliveryFailed as exc:
        exc.summary = _summary(client, producer, started, stopped_at, stop)  # type: ignore[attr-defined]
        logger.error("producer summary (with delivery failures): %s", exc.summary)  # type: ignore[attr-defined]
        raise
    summary = _summary(client, producer, started, stopped_at, stop)
    logger.info("producer summary: %s", summary)
    return summary


def _summary(
    client: TradingViewClient, producer: QuoteProducer, started: float, stopped_at: float, stop: threading.Event
) -> dict[str, Any]:
    stats = client.stats
    return {
        "quotes": producer.delivered,
        "quotes_sent": producer.sent,
        "delivery_failures": producer.failed,
        "too_large": producer.too_large,
        "messages": stats.messages,
        "packets": stats.packets,
        "heartbeats": stats.heartbeats,
        "connects": stats.connects,
        "reconnects": stats.reconnects,
        "malformed_packets": stats.malformed_packets,
        "errors": dict(stats.errors),
        "dropped_symbols": dict(client.session.dropped),
        "delayed_symbols": client.delayed_symbols(),
        "stopped_by": "stop_request" if stop.is_set() else "max_seconds",
        "seconds": round(stopped_at - started, 3),
        "flush_seconds": round(time.monotonic() - stopped_at, 3),
    }


CLIENT_TUNABLES = (
    "max_message_size",
    "connect_timeout",
    "watchdog_timeout",
    "backoff_initial",
    "backoff_cap",
    "stable_after",
    "auth_retry_delay",
    "poll_interval",
)


def client_config(
    url: str,
    symbols: list[str],
    tradingview: ConnectionInfo | None = None,
    record_path: str | None = None,
    **overrides: Any,
) -> ClientConfig:
    """A :class:`ClientConfig` from the optional ``tradingview_default`` connection plus explicit overrides.

    The connection's password is the user's auth token (never logged), sent only to TradingView's own
    hosts or to the connection's own host; its extra may hold ``headers`` (merged over the browser-like
    defaults) and any of :data:`CLIENT_TUNABLES`.
    """
    kwargs: dict[str, Any] = {}
    headers = dict(DEFAULT_HEADERS)
    token = own_url = None
    if tradingview is not None:
        token = tradingview.password or None
        own_url = tradingview.host or None
        extra = dict(tradingview.extra)
        extra_headers = extra.pop("headers", {})
        if not isinstance(extra_headers, Mapping):
            raise ConfigError(f"connection {tradingview.conn_id!r}: extra 'headers' must be an object of name: value")
        headers.update({str(k): str(v) for k, v in extra_headers.items()})
        unknown = sorted(set(extra) - set(CLIENT_TUNABLES))
        if unknown:
            raise ConfigError(
                f"connection {tradingview.conn_id!r}: unknown extra key(s) {', '.join(unknown)}; "
                f"allowed: headers, {', '.join(CLIENT_TUNABLES)}"
            )
        kwargs.update(extra)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    for key, value in kwargs.items():
        if key not in CLIENT_TUNABLES:
            raise ConfigError(f"unknown client setting {key!r}")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"client setting {key} must be a number, got {value!r}")
    # The token may go to TradingView's own hosts or to this connection's own host, nowhere else
    # (ClientConfig refuses any other URL with a ConfigError that says what to set).
    return ClientConfig(
        url=url,
        symbols=list(symbols),
        auth_token=token,
        token_own_url=own_url,
        token_source=tradingview.conn_id if tradingview is not None else None,
        headers=headers,
        record_path=record_path,
        **kwargs,
    )


def feed_url(param_url: str, tradingview: ConnectionInfo | None) -> str:
    """The websocket URL to use: an explicit (non-default) Param wins, else the connection's host, else TradingView.

    This lets a deployment point every scheduled run at another feed (``make run SOURCE=replay``
    sets ``tradingview_default``'s host to the local feed server) without editing Params.
    """
    if param_url != TRADINGVIEW_URL or tradingview is None or not tradingview.host:
        return param_url
    host = tradingview.host
    if not host.startswith(("ws://", "wss://")):
        raise ConfigError(
            f"connection {tradingview.conn_id!r}: host must be a websocket URL (ws:// or wss://), got {host!r}"
        )
    return host
