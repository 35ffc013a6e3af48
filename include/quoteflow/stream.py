"""The producer run: TradingView client → Kafka, until a stop request or a time limit.

Used by the ``produce`` command and the ``quotes_producer`` DAG alike. The caller owns the stop
flag (a signal handler or an operator's ``on_kill`` sets it); the run notices it within the
client's poll interval, flushes Kafka within ``flush_timeout`` and returns its summary.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from quoteflow.bars import BAR_HEADERS
from quoteflow.gaps import GAP_HEADERS, gap_key
from quoteflow.kafka.admin import check_topic
from quoteflow.kafka.quote_producer import DeliveryFailed, KafkaProducerError, QuoteProducer
from quoteflow.quotes import format_timestamp
from quoteflow.settings import DEFAULT_HISTORY_BARS, TRADINGVIEW_URL, ConfigError, ConnectionInfo
from quoteflow.tradingview.client import DEFAULT_HEADERS, ClientConfig, TradingViewClient
from quoteflow.tradingview.session import SymbolState

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 30.0
# A run that starts this long after the previous run's last bar records a handover gap (a restart is a few s).
HANDOVER_MIN_GAP_S = 1.0
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
    shard: str = "0"  # this connection's share of the symbols ("0" when unsharded): in the stats line and summary
    # Called with each stats line's figures as a dict (the DAG pushes them to XCom "stats" for the live view).
    on_stats: Callable[[dict[str, Any]], None] | None = None
    # Bars on (the client config has bar resolutions): Bar records to bars_topic, gap events to gaps_topic.
    bars_topic: str | None = None
    gaps_topic: str | None = None
    # Look in bars_topic for the previous run's last bar: a gap since then is a ``handover`` gap, filled.
    handover: bool = True

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

    def on_bar(self, key: bytes, value: bytes) -> None:
        assert self.run.bars_topic is not None
        self.producer.send_to(self.run.bars_topic, key, value, BAR_HEADERS)

    def on_gap(self, event: dict[str, Any]) -> None:
        if self.run.gaps_topic is not None:
            self.producer.send_to(self.run.gaps_topic, gap_key(event), orjson.dumps(event), GAP_HEADERS)

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
            "stats: shard %s, %d symbol(s), %.1f quotes/s, %d sent, %d delivered, %d in flight, %d too large, "
            "%d reconnect(s), errors %s; "
            "last heartbeat %s ago; last tick age (stalest): %s; no tick yet: %d symbol(s)%s; delayed feed: %s%s",
            self.run.shard,
            len(self.run.client.symbols),
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
            self._bar_stats(),
        )
        if self.run.on_stats is not None:
            self.run.on_stats(
                {
                    "shard": self.run.shard,
                    "symbols": len(self.run.client.symbols),
                    "at": format_timestamp(time.time()),
                    "quotes_per_s": round(rate, 1),
                    "quotes_sent": sent,
                    "quotes": self.producer.delivered,
                    "connects": stats.connects,
                    "reconnects": stats.reconnects,
                    "errors": dict(stats.errors),
                    "last_heartbeat_age_s": None if heartbeat is None else round(now - heartbeat, 1),
                    "stalest_tick_age_s": stalest[0][0] if stalest else None,
                    "no_tick_yet": len(never),
                }
            )

    def _bar_stats(self) -> str:
        """The bars part of the stats line (empty with bars off): bars delivered, gaps, history requests."""
        assert self.client is not None
        chart = self.client.chart
        if chart is None or self.run.bars_topic is None:
            return ""
        return (
            f"; bars {self.producer.delivered_to(self.run.bars_topic)} delivered over {len(chart.active)} series, "
            f"{self.client.stats.gaps} gap(s), {chart.stats.history_requests} history request(s)"
        )


def run_producer(run: ProducerRun, stop: threading.Event | None = None) -> dict[str, Any]:
    """Stream quotes into Kafka until ``stop`` is set or ``max_seconds`` pass; return the run's summary.

    Raises :class:`~quoteflow.kafka.quote_producer.DeliveryFailed` after the final flush if any
    record was not delivered (the summary is attached as ``exc.summary``).
    """
    stop = stop or threading.Event()
    bars_on = bool(run.client.bar_resolutions)
    if bars_on and not run.bars_topic:
        if not run.client.quotes:
            raise ConfigError("a history-only run needs a bars topic to write to")
        logger.info("bar resolutions are set but the bars topic is empty: bars are off for this run")
        run = dataclasses.replace(run, client=dataclasses.replace(run.client, bar_resolutions=()))
        bars_on = False
    topic_max_bytes = None
    client_config = run.client
    if run.check_topic:
        if client_config.quotes:
            topic_max_bytes = check_topic(run.kafka, run.topic)
        if bars_on and client_config.quotes and not _side_topics_exist(run):
            client_config = dataclasses.replace(client_config, bar_resolutions=())
            bars_on = False
        elif bars_on:
            check_topic(run.kafka, str(run.bars_topic))
    if client_config.shard != run.shard:
        client_config = dataclasses.replace(client_config, shard=run.shard)
    producer = QuoteProducer(run.kafka, run.topic, topic_max_bytes=topic_max_bytes).open()
    producer.abort = stop  # a stop request must not wait behind a full queue while Kafka is down
    pump = _Pump(run, producer)
    client = TradingViewClient(
        client_config,
        pump.on_quote,
        on_tick=pump.on_tick,
        on_bar=pump.on_bar if bars_on else None,
        on_gap=pump.on_gap if bars_on else None,
    )
    pump.client = client
    if bars_on and run.handover and client_config.quotes and client.chart is not None:
        last = last_bar_received(run.kafka, str(run.bars_topic), [s.key_bytes for s in client.chart.series])
        if last is not None and time.time() - last > HANDOVER_MIN_GAP_S:
            client.open_gap(
                "handover", last, f"the previous run's last bar arrived at {format_timestamp(last, milliseconds=True)}"
            )
    started = time.monotonic()
    deadline = started + run.max_seconds if run.max_seconds is not None else None
    logger.info(
        "shard %s: producing %d symbol(s) from %s to topic %s%s",
        run.shard,
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
        exc.summary = {  # type: ignore[attr-defined]
            **_summary(client, producer, started, stopped_at, stop, run.shard),
            **_bar_summary(client, producer, run),
        }
        logger.error("producer summary (with delivery failures): %s", exc.summary)  # type: ignore[attr-defined]
        raise
    summary = {
        **_summary(client, producer, started, stopped_at, stop, run.shard),
        **_bar_summary(client, producer, run),
    }
    logger.info("producer summary: %s", summary)
    return summary


def _summary(
    client: TradingViewClient,
    producer: QuoteProducer,
    started: float,
    stopped_at: float,
    stop: threading.Event,
    shard: str,
) -> dict[str, Any]:
    stats = client.stats
    return {
        "shard": shard,
        "symbols": len(client.config.symbols),
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


def _side_topics_exist(run: ProducerRun) -> bool:
    """True if the bars (and gaps) topics are there with LogAppendTime; missing ones turn bars off, loudly.

    Quotes are the producer's first job: a deployment that has not run the new setup yet keeps streaming
    them. A topic with the wrong timestamp type is still refused (it would break the indexer's windows).
    """
    from quoteflow.kafka.admin import TopicConfigError

    for topic in (run.bars_topic, run.gaps_topic):
        if not topic:
            continue
        try:
            check_topic(run.kafka, topic)
        except TopicConfigError as exc:
            if "does not exist" not in str(exc):
                raise
            logger.error(
                "bars are OFF for this run: topic %s does not exist; run `quoteflow setup` (or the quotes_setup "
                "DAG) to create the bars and gaps topics, or set bar_resolutions to [] to run quotes only",
                topic,
            )
            return False
    return True


def _bar_summary(client: TradingViewClient, producer: QuoteProducer, run: ProducerRun) -> dict[str, Any]:
    """The bars part of the summary (empty with bars off): records delivered, gap events, history requests."""
    chart = client.chart
    if chart is None:
        return {}
    out: dict[str, Any] = {
        "bars": producer.delivered_to(str(run.bars_topic)),
        "bars_by_origin": dict(chart.stats.bars),
        "gaps": producer.delivered_to(run.gaps_topic) if run.gaps_topic else 0,
        "gaps_seen": client.stats.gaps,
        "history_requests": chart.stats.history_requests,
        "bar_series": len(chart.active),
        "dropped_series": {f"{s.symbol}|{s.resolution}": s.dropped for s in chart.series if s.dropped},
    }
    for topic in (run.bars_topic, run.gaps_topic):
        counts = producer.others.get(topic) if topic else None
        if counts is not None and (counts.failed or counts.too_large):
            out[f"{topic}_failed"] = counts.failed
            out[f"{topic}_too_large"] = counts.too_large
    if client.finished:
        out["stopped_by"] = "history_complete"
    return out


def last_bar_received(
    kafka: Mapping[str, Any], topic: str, keys: list[bytes], per_partition: int = 500
) -> float | None:
    """Epoch seconds of the newest ``received_at`` among the last records of ``topic`` with one of ``keys``.

    What the previous producer run last wrote for these series: a handover gap starts there. Reads at most
    ``per_partition`` records from the end of each partition (``assign()``, no group); ``None`` if none match.
    """
    from quoteflow.kafka.clients import consumer
    from quoteflow.kafka.reader import PartitionRange, read_ranges, topic_partitions, watermarks
    from quoteflow.quotes import parse_timestamp

    wanted = set(keys)
    newest: float | None = None
    with consumer(kafka, f"quoteflow-handover-{int(time.time())}") as client:
        ranges = []
        for partition in topic_partitions(client, topic):
            low, high = watermarks(client, topic, partition)
            ranges.append(PartitionRange(topic, partition, max(low, high - per_partition), high))
        for batch in read_ranges(client, ranges, stall_timeout_s=10.0):
            for message in batch:
                if message.key() not in wanted:
                    continue
                try:
                    moment = parse_timestamp(orjson.loads(message.value())["received_at"]).timestamp()
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue  # not a bar this run can read: the indexer dead-letters it
                newest = moment if newest is None else max(newest, moment)
    return newest


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


def with_bars(
    config: ClientConfig,
    resolutions: Sequence[str],
    symbols: Sequence[str] | None = None,
    history_bars: int = DEFAULT_HISTORY_BARS,
    *,
    bar_range: str = "",
    quotes: bool = True,
) -> ClientConfig:
    """``config`` with chart sessions for ``symbols`` (None = all of the config's) at ``resolutions`` (none = off).

    ``quotes=False`` makes a history-only run: no quote session, done once every series' history is in.
    """
    if any(not isinstance(r, str) or not r.strip() for r in resolutions):
        raise ConfigError(
            f"bar resolutions must be non-empty strings such as '1', '5', '60', '1D'; got {resolutions!r}"
        )
    return dataclasses.replace(
        config,
        bar_resolutions=tuple(r.strip() for r in resolutions),
        bar_symbols=None if symbols is None else list(symbols),
        history_bars=history_bars,
        bar_range=bar_range,
        quotes=quotes,
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
