"""The live view's answers: chart, latest quotes and health, merged from Elasticsearch and the Kafka tail.

Elasticsearch holds everything the indexer has written (windows of 30 s); the Kafka tail holds the
newest records that may not be indexed yet. The chart is the ES buckets followed by the raw ticks
newer than the last bucket; the latest quote is whichever of the two is newer.

Every answer is bounded in time, because each one holds a thread of the API server: a backend that
does not answer within ``backend_timeout_s`` is reported down, and for ``outage_ttl_s`` afterwards
requests are told so at once instead of waiting on it again. Kafka reads share one consumer and so
one lock; a request that finds the lock taken is served a recent enough result, or told "busy" at
once, rather than queueing behind a read that may be waiting on a dead broker.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from confluent_kafka import KafkaException
from elastic_transport import TransportError

from quoteflow.kafka.clients import admin_client
from quoteflow.kafka.reader import RangeReadError
from quoteflow.liveview import bars_view, elastic_view, kafka_view
from quoteflow.liveview.bars_view import epoch_ms
from quoteflow.settings import (
    BARS_INDEX_PATTERN,
    BARS_TOPIC,
    CONSUMER_GROUP,
    DEFAULT_HISTORY_BARS,
    DEFAULT_SYMBOLS,
    DLQ_TOPIC,
    GAPS_INDEX_PATTERN,
    GAPS_TOPIC,
    INDEX_PATTERN,
    QUOTES_TOPIC,
    ConfigError,
)

logger = logging.getLogger(__name__)

MAX_RANGE_S = 24 * 3600
_RANGE_RE = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
LATEST_FIELDS = ("price", "change", "change_percent", "volume", "currency", "event_time", "received_at")
BACKEND_TIMEOUT_S = kafka_view.METADATA_TIMEOUT_S
OUTAGE_TTL_S = 3.0
BUSY_STALE_S = 5.0  # while another request reads Kafka, a result this old is still worth showing
# Errors of a Kafka read that mean "Kafka did not answer as it should", as opposed to a missing topic (ConfigError).
KAFKA_FAILURES = (kafka_view.KafkaViewError, KafkaException, RangeReadError, TimeoutError)

T = TypeVar("T")


def parse_range(text: str, max_s: int = MAX_RANGE_S, what: str = "") -> int:
    """``"15m"``/``"1h"``/``"90s"``/``"900"`` → seconds (1 s to ``max_s``, default 24 h); else :class:`ValueError`."""
    match = _RANGE_RE.match(text.strip().lower())
    if not match:
        raise ValueError(f"range {text!r} is not a number with an optional unit s, m, h or d (e.g. 15m)")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if not 1 <= seconds <= max_s:
        raise ValueError(f"range {text!r} must be between 1s and {_human_s(max_s)}{what}")
    return seconds


def candle_range(resolution: str, text: str | None) -> int:
    """A candle chart's range in seconds: ``text`` (at most ``MAX_CANDLES`` candles), by default 300 bars."""
    width_s = bars_view.resolution_seconds(resolution)
    if not text:
        return DEFAULT_HISTORY_BARS * width_s
    label = bars_view.LABELS[resolution]
    return parse_range(text, bars_view.MAX_CANDLES * width_s, f" at {label} ({bars_view.MAX_CANDLES} candles)")


def _human_s(seconds: int) -> str:
    for unit, width in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % width == 0 and seconds > width:
            return f"{seconds // width}{unit}"
    return f"{seconds}s"


class BackendUnavailable(RuntimeError):
    """Kafka or Elasticsearch did not answer (or is being read by another request); says which, and when to retry."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class KafkaBusy(BackendUnavailable):
    """Another request holds the live view's Kafka consumer; retrying in a moment will do."""


class Outage:
    """The last failure of one backend, answered at once for ``ttl_s`` instead of waiting on the backend again."""

    def __init__(self, ttl_s: float = OUTAGE_TTL_S) -> None:
        """No failure yet."""
        self.ttl_s = ttl_s
        self._last: tuple[float, str] | None = None  # (monotonic time, message); one reference, swapped whole

    def check(self) -> None:
        """Raise :class:`BackendUnavailable` if the backend failed less than ``ttl_s`` ago."""
        last = self._last
        if last is None:
            return
        at, message = last
        left = at + self.ttl_s - time.monotonic()
        if left > 0:
            raise BackendUnavailable(f"{message} (retrying in {left:.1f} s)", left)

    def failed(self, message: str) -> BackendUnavailable:
        """Remember a failure (logged once) and return the error to raise."""
        if self._last is None or self._last[1] != message:
            logger.warning("quotes view: %s", message)
        self._last = (time.monotonic(), message)
        return BackendUnavailable(message, self.ttl_s)

    def recovered(self) -> None:
        """The backend answered: stop repeating the old failure."""
        if self._last is not None:
            logger.info("quotes view: the backend answers again after: %s", self._last[1])
            self._last = None


@dataclass(frozen=True)
class LiveNames:
    """Which topic, DLQ, index pattern and consumer group the view watches."""

    topic: str = QUOTES_TOPIC
    dlq_topic: str = DLQ_TOPIC
    index_pattern: str = INDEX_PATTERN
    group: str = CONSUMER_GROUP
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    bars_topic: str = BARS_TOPIC
    bars_index_pattern: str = BARS_INDEX_PATTERN
    gaps_topic: str = GAPS_TOPIC
    gaps_index_pattern: str = GAPS_INDEX_PATTERN


@dataclass(frozen=True)
class _Cached:
    at: float
    key: tuple[str, ...]
    value: Any


class LiveView:
    """Answers for the page; clients are made on first use, once, and Kafka reads never wait for each other."""

    def __init__(
        self,
        es_factory: Callable[[], Any],
        kafka_config: Mapping[str, Any],
        *,
        es_label: str = "Elasticsearch",
        tail_per_partition: int = 200,
        tail_timeout_s: float = 1.0,
        tail_max_age_s: float = 0.5,
        health_max_age_s: float = 1.0,
        backend_timeout_s: float = BACKEND_TIMEOUT_S,
        outage_ttl_s: float = OUTAGE_TTL_S,
    ) -> None:
        """Keep the factories and settings; nothing connects until the first request.

        ``es_factory`` must make a client whose requests time out within about ``backend_timeout_s``.
        """
        if "bootstrap.servers" not in kafka_config:
            raise ConfigError("the live view's Kafka config has no 'bootstrap.servers'")
        self._es_factory = es_factory
        self._es_label = es_label
        self._kafka_config = dict(kafka_config)
        self._kafka_label = f"Kafka at {self._kafka_config['bootstrap.servers']}"
        self._tail_per_partition = tail_per_partition
        self._tail_timeout_s = tail_timeout_s
        self._tail_max_age_s = tail_max_age_s
        self._health_max_age_s = health_max_age_s
        self._timeout_s = backend_timeout_s
        self._lock = threading.Lock()  # the Kafka consumer and admin client: one reader at a time
        self._client_lock = threading.Lock()
        self._es: Any = None
        self._consumer: Any = None
        self._admin: Any = None
        self._cache: dict[str, _Cached] = {}
        self._kafka_outage = Outage(outage_ttl_s)
        self._es_outage = Outage(outage_ttl_s)
        self._missing_topic: str | None = None

    # ------------------------------------------------------------ clients
    def _es_client(self) -> Any:
        with self._client_lock:
            if self._es is None:
                self._es = self._es_factory()
            return self._es

    def _kafka(self) -> tuple[Any, Any]:
        if self._consumer is None:
            from confluent_kafka import Consumer

            self._consumer = Consumer(kafka_view.viewer_config(self._kafka_config))
            self._admin = admin_client(kafka_view.viewer_admin_config(self._kafka_config))
        return self._consumer, self._admin

    def close(self) -> None:
        """Close the Kafka consumer and the Elasticsearch client (if they were made)."""
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
                self._admin = None  # an AdminClient has no close(): dropping it stops its reconnects
        with self._client_lock:
            if self._es is not None:
                self._es.close()
                self._es = None

    # ------------------------------------------------------------ bounded backend calls
    def _es_read(self, what: str, read: Callable[[Any], T]) -> T:
        """``read(es)``, or :class:`BackendUnavailable` at once while Elasticsearch is known to be down."""
        self._es_outage.check()
        try:
            out = read(self._es_client())
        except TransportError as exc:  # connection refused, timed out: not an answer at all
            raise self._es_outage.failed(f"{self._es_label} did not answer {what}: {exc}") from exc
        self._es_outage.recovered()
        return out

    def _kafka_read(self, slot: str, key: tuple[str, ...], max_age_s: float, what: str, read: Callable[..., T]) -> T:
        """``read(consumer, admin)`` under the Kafka lock, shared through ``slot`` by requests within ``max_age_s``.

        Never waits for the lock: if another request holds it, a result up to :data:`BUSY_STALE_S` old
        is returned, else :class:`KafkaBusy`. A failure is repeated at once for ``outage_ttl_s``.
        """

        def cached(age_s: float) -> _Cached | None:
            hit = self._cache.get(slot)
            return hit if hit is not None and hit.key == key and time.monotonic() - hit.at <= age_s else None

        hit = cached(max_age_s)
        if hit is not None:
            return hit.value  # type: ignore[no-any-return]
        self._kafka_outage.check()
        if not self._lock.acquire(blocking=False):
            hit = cached(BUSY_STALE_S)
            if hit is not None:
                return hit.value  # type: ignore[no-any-return]
            raise KafkaBusy(f"{self._kafka_label} is being read by another request of the live view; retry", 1.0)
        try:
            hit = cached(max_age_s)  # another request may have refreshed it while this one got here
            if hit is not None:
                return hit.value  # type: ignore[no-any-return]
            self._kafka_outage.check()
            consumer, admin = self._kafka()
            try:
                value = read(consumer, admin)
            except KAFKA_FAILURES as exc:
                detail = str(exc) or f"no answer within {self._timeout_s:g} s"
                raise self._kafka_outage.failed(f"{self._kafka_label} did not answer {what}: {detail}") from exc
            self._kafka_outage.recovered()
            self._cache[slot] = _Cached(time.monotonic(), key, value)
            return value
        finally:
            self._lock.release()

    # ------------------------------------------------------------ reads
    def tail(self, topic: str) -> list[kafka_view.TailRecord]:
        """The newest records of ``topic``, shared by requests within ``tail_max_age_s``."""
        return self._kafka_read(
            f"tail:{topic}",
            (topic,),
            self._tail_max_age_s,
            f"tailing {topic}",
            lambda consumer, _: kafka_view.tail_records(
                consumer, topic, self._tail_per_partition, self._tail_timeout_s, self._timeout_s
            ),
        )

    def _tail_or_error(self, topic: str) -> tuple[list[kafka_view.TailRecord], str | None]:
        """The tail, or no records and the reason: the chart still shows what Elasticsearch has."""
        try:
            return self.tail(topic), None
        except BackendUnavailable as exc:
            return [], str(exc)  # logged once by the outage, or only busy
        except ConfigError as exc:
            if str(exc) != self._missing_topic:
                logger.warning("quotes view cannot tail %s: %s", topic, exc)
            self._missing_topic = str(exc)
            return [], str(exc)

    def latest(self, names: LiveNames, symbols: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per symbol: the newest quote (ES or Kafka tail), where it came from, and the newest indexed one."""
        indexed = self._es_read(
            "the latest quotes",
            lambda es: elastic_view.latest_quotes(es, names.index_pattern, names.topic, symbols),
        )
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
        points = self._es_read(
            f"the price series of {symbol}",
            lambda es: elastic_view.price_series(es, names.index_pattern, names.topic, symbol, start_ms, end_ms),
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

    def _candle_tails(
        self, names: LiveNames
    ) -> tuple[list[kafka_view.TailRecord], list[kafka_view.TailRecord], str | None]:
        """The newest records of the bars and gaps topics in one Kafka read; a missing topic gives none, says so."""

        def read(consumer: Any, _: Any) -> tuple[list[kafka_view.TailRecord], list[kafka_view.TailRecord], str | None]:
            tails: list[list[kafka_view.TailRecord]] = []
            missing = []
            for topic, decode in (
                (names.bars_topic, kafka_view.decode_bar_or_none),
                (names.gaps_topic, kafka_view.decode_gap_or_none),
            ):
                try:
                    tails.append(
                        kafka_view.tail_records(
                            consumer, topic, self._tail_per_partition, self._tail_timeout_s, self._timeout_s, decode
                        )
                    )
                except ConfigError as exc:
                    tails.append([])
                    missing.append(str(exc))
            return tails[0], tails[1], "; ".join(missing) or None

        try:
            return self._kafka_read(
                "tail:candles",
                (names.bars_topic, names.gaps_topic),
                self._tail_max_age_s,
                f"tailing {names.bars_topic} and {names.gaps_topic}",
                read,
            )
        except BackendUnavailable as exc:
            return [], [], str(exc)  # logged once by the outage, or only busy

    def candles(
        self, names: LiveNames, symbol: str, resolution: str, range_s: int, now_ms: int | None = None
    ) -> dict[str, Any]:
        """Candles of ``symbol`` at ``resolution`` over the last ``range_s``, newest bar versions from the Kafka tail.

        History is the 1-minute bars in Elasticsearch (aggregated there for coarser resolutions); a bar
        the tail holds replaces its document when its offset is at least the document's (newest offset
        wins per bar id), and the buckets such bars touch are aggregated here from the merged minutes.
        Gap markers are the gap events in Elasticsearch and in the gaps topic's tail, by ``gap_id``.
        """
        width_s = bars_view.resolution_seconds(resolution)
        end_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        start_ms = bars_view.floor_ms(end_ms - range_s * 1000, width_s)
        bar_records, gap_records, tail_error = self._candle_tails(names)
        key = f"{symbol}|{bars_view.BASE_RESOLUTION}"
        tailed: dict[int, dict[str, Any]] = {}
        for rec in bar_records:
            if rec.value is None or rec.key != key or rec.value["symbol"] != symbol:
                continue
            bar = bars_view.base_bar(rec.value, rec.partition, rec.offset)
            best = tailed.get(bar["t"])
            if start_ms <= bar["t"] <= end_ms and (best is None or rec.offset > best["offset"]):
                tailed[bar["t"]] = bar
        index = names.bars_index_pattern
        if resolution == bars_view.BASE_RESOLUTION:
            history: list[dict[str, Any]] = []
            merge_from = start_ms
        else:
            # Buckets a tailed bar falls in are recomputed from the merged minutes; older ones ES aggregates.
            merge_from = bars_view.floor_ms(min(tailed), width_s) if tailed else end_ms + 1
            history = self._es_read(
                f"the {bars_view.LABELS[resolution]} candles of {symbol}",
                lambda es: bars_view.aggregated_bars(es, index, symbol, resolution, start_ms, merge_from - 1),
            )
        indexed = (
            self._es_read(
                f"the 1m bars of {symbol}",
                lambda es: bars_view.base_bars(es, index, symbol, merge_from, end_ms),
            )
            if merge_from <= end_ms
            else []
        )
        minutes = {bar["t"]: bar for bar in indexed}
        from_kafka = 0
        for t, bar in tailed.items():
            doc = minutes.get(t)
            if doc is None or doc["offset"] is None or bar["offset"] > doc["offset"]:
                from_kafka += 1  # newer than what the indexer wrote (or not written yet)
                minutes[t] = bar
        recent = bars_view.aggregate(minutes.values(), resolution)
        gap_docs = self._es_read(
            f"the gaps of {symbol}",
            lambda es: bars_view.gaps(es, names.gaps_index_pattern, symbol, start_ms, end_ms),
        )
        gaps = {g["gap_id"]: g for g in gap_docs}
        for rec in gap_records:
            gap = rec.value
            if gap is None or symbol not in gap["symbols"]:
                continue
            view = bars_view.gap_view(gap)
            if view["start_ms"] <= end_ms and view["end_ms"] >= start_ms:
                gaps[view["gap_id"]] = view
        return {
            "symbol": symbol,
            "resolution": resolution,
            "label": bars_view.LABELS[resolution],
            "resolution_s": width_s,
            "range_s": range_s,
            "start_ms": start_ms,
            "end_ms": end_ms,
            "candles": [*history, *recent],
            "bars_from_kafka": from_kafka,
            "gaps": sorted(gaps.values(), key=lambda g: (g["start_ms"], g["gap_id"])),
            "kafka_error": tail_error,
        }

    def health(self, names: LiveNames, latest: Mapping[str, Mapping[str, Any]], now_ms: int | None = None) -> dict:
        """Last tick age per symbol, indexer lag per partition, dead letters in the last hour."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        ages = {
            symbol: (now - epoch_ms(entry["quote"]["received_at"])) / 1000 if entry.get("quote") else None
            for symbol, entry in latest.items()
        }

        def read(consumer: Any, admin: Any) -> tuple[list[kafka_view.PartitionLag], int | None]:
            lag = kafka_view.indexer_lag(admin, consumer, names.topic, names.group, self._timeout_s)
            try:
                dead = kafka_view.records_since(consumer, names.dlq_topic, now - 3600_000, self._timeout_s)
            except ConfigError:
                dead = None  # no DLQ topic yet: nothing was ever dead-lettered
            return lag, dead

        key = (names.topic, names.group, names.dlq_topic)
        lag, dead = self._kafka_read("health", key, self._health_max_age_s, "the indexer lag and dead letters", read)
        return {
            "now_ms": now,
            "tick_age_s": ages,
            "lag": [asdict(p) for p in lag],
            "lag_total": sum(p.lag for p in lag if p.lag is not None),
            "dead_letters_last_hour": dead,
        }

    def symbols(self, names: LiveNames) -> list[str]:
        """The configured symbols first, then any other symbol Elasticsearch has documents for."""
        found = self._es_read(
            "the known symbols", lambda es: elastic_view.known_symbols(es, names.index_pattern, names.topic)
        )
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
