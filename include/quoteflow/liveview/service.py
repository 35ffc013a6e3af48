"""The live view's answers: chart, latest quotes and health, merged from Elasticsearch and the Kafka tail.

Elasticsearch holds everything the indexer has written (windows of 30 s); the Kafka tail holds the
newest records that may not be indexed yet. The chart is the ES buckets followed by the raw ticks
newer than the last bucket; the latest quote is whichever of the two is newer.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from include.quoteflow.liveview import elastic_view, kafka_view
from include.quoteflow.settings import (
    CONSUMER_GROUP,
    DEFAULT_SYMBOLS,
    DLQ_TOPIC,
    INDEX_PATTERN,
    QUOTES_TOPIC,
    ConfigError,
)

logger = logging.getLogger(__name__)

MAX_RANGE_S = 24 * 3600
_RANGE_RE = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
LATEST_FIELDS = ("price", "change", "change_percent", "volume", "currency", "event_time", "received_at")


def parse_range(text: str) -> int:
    """``"15m"``/``"1h"``/``"90s"``/``"900"`` → seconds (1 s to 24 h); :class:`ValueError` otherwise."""
    match = _RANGE_RE.match(text.strip().lower())
    if not match:
        raise ValueError(f"range {text!r} is not a number with an optional unit s, m, h or d (e.g. 15m)")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if not 1 <= seconds <= MAX_RANGE_S:
        raise ValueError(f"range {text!r} must be between 1s and 24h")
    return seconds


def epoch_ms(rfc3339: str) -> int:
    """RFC 3339 UTC text (``…T02:00:00.123Z``) → epoch milliseconds."""
    return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass(frozen=True)
class LiveNames:
    """Which topic, DLQ, index pattern and consumer group the view watches."""

    topic: str = QUOTES_TOPIC
    dlq_topic: str = DLQ_TOPIC
    index_pattern: str = INDEX_PATTERN
    group: str = CONSUMER_GROUP
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS


@dataclass
class _TailCache:
    at: float = 0.0
    topic: str = ""
    records: list[kafka_view.TailRecord] = field(default_factory=list)


class LiveView:
    """Answers for the page; clients are made on first use, once, and Kafka reads are serialised by a lock."""

    def __init__(
        self,
        es_factory: Callable[[], Any],
        kafka_config: Mapping[str, Any],
        *,
        tail_per_partition: int = 200,
        tail_timeout_s: float = 1.0,
        tail_max_age_s: float = 0.5,
    ) -> None:
        """Keep the factories and settings; nothing connects until the first request."""
        if "bootstrap.servers" not in kafka_config:
            raise ConfigError("the live view's Kafka config has no 'bootstrap.servers'")
        self._es_factory = es_factory
        self._kafka_config = dict(kafka_config)
        self._tail_per_partition = tail_per_partition
        self._tail_timeout_s = tail_timeout_s
        self._tail_max_age_s = tail_max_age_s
        self._lock = threading.Lock()
        self._es: Any = None
        self._consumer: Any = None
        self._admin: Any = None
        self._tail = _TailCache()
        self._tail_error: str | None = None

    # ------------------------------------------------------------ clients
    def _es_client(self) -> Any:
        if self._es is None:
            self._es = self._es_factory()
        return self._es

    def _kafka(self) -> tuple[Any, Any]:
        if self._consumer is None:
            from confluent_kafka import Consumer
            from confluent_kafka.admin import AdminClient

            self._consumer = Consumer(kafka_view.viewer_config(self._kafka_config))
            admin_keys = {k: v for k, v in self._kafka_config.items() if k not in ("group.id", "auto.offset.reset")}
            self._admin = AdminClient(admin_keys)
        return self._consumer, self._admin

    def close(self) -> None:
        """Close the Kafka consumer and the Elasticsearch client (if they were made)."""
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
            if self._es is not None:
                self._es.close()
                self._es = None

    # ------------------------------------------------------------ reads
    def tail(self, topic: str) -> list[kafka_view.TailRecord]:
        """The newest records of ``topic``, shared by requests within ``tail_max_age_s``."""
        with self._lock:
            now = time.monotonic()
            if self._tail.topic != topic or now - self._tail.at > self._tail_max_age_s:
                consumer, _ = self._kafka()
                records = kafka_view.tail_records(consumer, topic, self._tail_per_partition, self._tail_timeout_s)
                self._tail = _TailCache(at=time.monotonic(), topic=topic, records=records)
            return self._tail.records

    def _tail_or_error(self, topic: str) -> tuple[list[kafka_view.TailRecord], str | None]:
        """The tail, or no records and the reason: the chart still shows what Elasticsearch has."""
        from confluent_kafka import KafkaException

        try:
            return self.tail(topic), None
        except (ConfigError, kafka_view.KafkaViewError, KafkaException) as exc:
            if str(exc) != self._tail_error:
                logger.warning("quotes view cannot tail %s: %s", topic, exc)
            self._tail_error = str(exc)
            return [], str(exc)

    def latest(self, names: LiveNames, symbols: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per symbol: the newest quote (ES or Kafka tail), where it came from, and the newest indexed one."""
        indexed = elastic_view.latest_quotes(self._es_client(), names.index_pattern, names.topic, symbols)
        records, tail_error = self._tail_or_error(names.topic)
        tailed = _newest_in_tail(records, symbols)
        out: dict[str, dict[str, Any]] = {}
        for symbol in symbols:
            es_doc, rec = indexed.get(symbol), tailed.get(symbol)
            entry: dict[str, Any] = {
                "symbol": symbol,
                "quote": None,
                "from": None,
                "indexed": None,
                "kafka_error": tail_error,
            }
            if es_doc is not None:
                entry["indexed"] = _quote_view(es_doc, es_doc["kafka"]["partition"], es_doc["kafka"]["offset"])
                entry["indexed"]["_id"] = es_doc["_id"]
                entry.update(quote=entry["indexed"], **{"from": "elasticsearch"})
            if rec is not None and rec.quote is not None and (es_doc is None or _is_newer(rec, es_doc)):
                entry.update(quote=_quote_view(rec.quote, rec.partition, rec.offset), **{"from": "kafka"})
            out[symbol] = entry
        return out

    def chart(self, names: LiveNames, symbol: str, range_s: int, now_ms: int | None = None) -> dict[str, Any]:
        """``{"t": [...ms], "price": [...], "indexed_points": n}``: ES buckets, then newer Kafka ticks."""
        end_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        start_ms = end_ms - range_s * 1000
        points = elastic_view.price_series(
            self._es_client(), names.index_pattern, names.topic, symbol, start_ms, end_ms
        )
        indexed = len(points)
        newest = points[-1][0] if points else start_ms - 1
        records, tail_error = self._tail_or_error(names.topic)
        ticks = sorted(
            (epoch_ms(r.quote["received_at"]), r.offset, float(r.quote["price"]))
            for r in records
            if r.quote is not None and r.quote["symbol"] == symbol
        )
        points.extend((t, price) for t, _, price in ticks if newest < t <= end_ms + 60_000)
        return {
            "symbol": symbol,
            "range_s": range_s,
            "start_ms": start_ms,
            "end_ms": end_ms,
            "bucket_s": elastic_view.bucket_interval_s(range_s),
            "t": [t for t, _ in points],
            "price": [p for _, p in points],
            "indexed_points": indexed,
            "kafka_error": tail_error,
        }

    def health(self, names: LiveNames, latest: Mapping[str, Mapping[str, Any]], now_ms: int | None = None) -> dict:
        """Last tick age per symbol, indexer lag per partition, dead letters in the last hour."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        ages = {
            symbol: (now - epoch_ms(entry["quote"]["received_at"])) / 1000 if entry.get("quote") else None
            for symbol, entry in latest.items()
        }
        with self._lock:
            consumer, admin = self._kafka()
            lag = kafka_view.indexer_lag(admin, consumer, names.topic, names.group)
            try:
                dead = kafka_view.records_since(consumer, names.dlq_topic, now - 3600_000)
            except ConfigError:
                dead = None  # no DLQ topic yet: nothing was ever dead-lettered
        return {
            "now_ms": now,
            "tick_age_s": ages,
            "lag": [asdict(p) for p in lag],
            "lag_total": sum(p.lag for p in lag if p.lag is not None),
            "dead_letters_last_hour": dead,
        }

    def symbols(self, names: LiveNames) -> list[str]:
        """The configured symbols first, then any other symbol Elasticsearch has documents for."""
        found = elastic_view.known_symbols(self._es_client(), names.index_pattern, names.topic)
        return list(dict.fromkeys([*names.symbols, *found]))


def _is_newer(rec: kafka_view.TailRecord, doc: Mapping[str, Any]) -> bool:
    assert rec.quote is not None
    return (epoch_ms(rec.quote["received_at"]), rec.offset) > (epoch_ms(doc["received_at"]), doc["kafka"]["offset"])


def _newest_in_tail(
    records: Sequence[kafka_view.TailRecord], symbols: Sequence[str]
) -> dict[str, kafka_view.TailRecord]:
    wanted = set(symbols)
    newest: dict[str, kafka_view.TailRecord] = {}
    for rec in records:
        if rec.quote is None or rec.quote["symbol"] not in wanted:
            continue
        best = newest.get(rec.quote["symbol"])
        if best is None or (rec.quote["received_at"], rec.offset) > (best.quote["received_at"], best.offset):  # type: ignore[index]
            newest[rec.quote["symbol"]] = rec
    return newest


def _quote_view(quote: Mapping[str, Any], partition: int, offset: int) -> dict[str, Any]:
    out = {name: quote.get(name) for name in LATEST_FIELDS}
    out.update(partition=partition, offset=offset)
    return out
