"""Shared helpers for the indexer's integration and DAG tests: real topics, real quotes, real reads back."""

from __future__ import annotations

import time
from typing import Any

import orjson

from quoteflow.quotes import SCHEMA_HEADER, Quote, format_timestamp

LOG_APPEND = {"message.timestamp.type": "LogAppendTime"}
SYMBOLS = ("BINANCE:SOLUSDT", "BINANCE:BTCUSDT", "BINANCE:ETHUSDT", "COINBASE:ADAUSD", "KRAKEN:XRPUSD")


def quote_value(i: int, *, event_time: str | None = None) -> tuple[bytes, bytes]:
    """A deterministic valid quote: (key, value); the price encodes ``i`` so values can be checked."""
    symbol = SYMBOLS[i % len(SYMBOLS)]
    exchange, ticker = symbol.split(":")
    quote = Quote(
        symbol=symbol,
        exchange=exchange,
        ticker=ticker,
        price=1000.0 + i / 4,
        volume=float(i),
        bid=999.0 + i / 4,
        change_percent=(i % 7) / 10,
        currency="USD",
        update_mode="streaming",
        received_at=format_timestamp(time.time(), milliseconds=True),
        event_time=event_time,
    )
    return symbol.encode(), quote.to_json()


def poison_values() -> list[tuple[str, bytes]]:
    """Records that are not valid Quotes, with the DLQ reason each must get."""
    good = orjson.loads(quote_value(0)[1])
    return [
        ("invalid_json", b'{"schema": 1, "price": 12'),
        ("schema", orjson.dumps({**good, "price": "No disponible"})),
        ("schema", orjson.dumps({**good, "surprise": True})),
        ("schema", orjson.dumps({**good, "volume": "12.5"})),
    ]


def produce(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes | None, bytes]],
    partition: int | None = None,
    config: dict[str, Any] | None = None,
):
    """Produce and wait; return ``[(partition, offset, key, value)]`` in send order (``config``: producer overrides)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5, **(config or {})})
    delivered: dict[int, tuple[int, int]] = {}
    errors: list[Any] = []

    def callback(index: int):
        def on_delivery(err, msg) -> None:
            if err is not None:
                errors.append(err)
            else:
                delivered[index] = (msg.partition(), msg.offset())

        return on_delivery

    for i, (key, value) in enumerate(records):
        kwargs = {"partition": partition} if partition is not None else {}
        while True:
            try:
                producer.produce(
                    topic, key=key, value=value, headers=[SCHEMA_HEADER], on_delivery=callback(i), **kwargs
                )
                break
            except BufferError:
                producer.poll(0.2)
        producer.poll(0)
    assert producer.flush(30) == 0 and not errors, errors
    return [(*delivered[i], key, value) for i, (key, value) in enumerate(records)]


def es_sources(es, prefix: str) -> dict[str, dict[str, Any]]:
    """Every document under ``prefix*`` as ``{_id: _source}`` (refreshes first; up to 10,000 documents)."""
    es.indices.refresh(index=f"{prefix}*", allow_no_indices=True)
    hits = es.search(index=f"{prefix}*", size=10_000, query={"match_all": {}}, allow_no_indices=True)["hits"]["hits"]
    return {h["_id"]: h["_source"] for h in hits}


def es_count(es, prefix: str) -> int:
    """Documents under ``prefix*`` after a refresh."""
    es.indices.refresh(index=f"{prefix}*", allow_no_indices=True)
    return int(es.count(index=f"{prefix}*", allow_no_indices=True)["count"])


def delete_ids(es, prefix: str, ids: list[str]) -> int:
    """Delete documents by id (the minimal ES distribution has no _delete_by_query)."""
    hits = es.search(index=f"{prefix}*", query={"ids": {"values": ids}}, size=len(ids), source=False)["hits"]["hits"]
    if hits:
        response = es.bulk(
            operations=[{"delete": {"_index": h["_index"], "_id": h["_id"]}} for h in hits], refresh=True
        )
        assert not response["errors"]
    return len(hits)


def dead_letters(bootstrap: str, dlq_topic: str) -> list:
    """Every dead letter in ``dlq_topic``."""
    from quoteflow.kafka.clients import make_consumer
    from quoteflow.kafka.dlq import read_dead_letters

    consumer = make_consumer({"bootstrap.servers": bootstrap}, "test-dlq-reader")
    try:
        return list(read_dead_letters(consumer, dlq_topic))
    finally:
        consumer.close()


def committed(bootstrap: str, topic: str, group: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets per partition (negative = none)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=15)
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()


def expected_docs(topic: str, delivered) -> dict[str, tuple[str, float]]:
    """``{_id: (symbol, price)}`` for the valid quotes among delivered records."""
    from quoteflow.quotes import InvalidQuote, decode_quote

    out = {}
    for partition, offset, _key, value in delivered:
        try:
            data = decode_quote(value)
        except InvalidQuote:
            continue
        out[f"{topic}-{partition}-{offset}"] = (data["symbol"], data["price"])
    return out


def wait_past(moment_epoch: float) -> None:
    """Sleep until wall-clock time is past ``moment_epoch`` (plus a little for broker timestamps)."""
    delay = moment_epoch - time.time() + 0.05
    if delay > 0:
        time.sleep(delay)


def bar_record(
    symbol: str,
    start: str,
    close: float,
    *,
    low: float | None = None,
    high: float | None = None,
    open_: float | None = None,
    closed: bool = True,
    origin: str = "live",
    resolution: str = "1",
) -> tuple[bytes, bytes]:
    """A valid bar as the chart client writes it: (key, value); low/high/open default around ``close``."""
    from quoteflow.bars import bar_key, encode_bar

    first = close if open_ is None else open_
    value = encode_bar(
        symbol=symbol,
        resolution=resolution,
        start=start,
        open=first,
        high=max(first, close) + 1 if high is None else high,
        low=min(first, close) - 1 if low is None else low,
        close=close,
        volume=10.0,
        closed=closed,
        origin=origin,
    )
    return bar_key(symbol, resolution).encode(), value


def gap_record(start: float, end: float, *, cause: str = "disconnect", shard: str = "0") -> tuple[bytes, bytes]:
    """A valid gap event from epoch seconds: (key, value)."""
    from quoteflow.gaps import encode_gap, gap_key, make_gap

    gap = make_gap(cause, start, end, ["BINANCE:SOLUSDT"], shard=shard, detail="test gap")
    return gap_key(gap), encode_gap(gap)
