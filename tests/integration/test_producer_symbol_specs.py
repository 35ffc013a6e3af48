"""A ``=``-JSON spec symbol end to end: feed server → producer → Kafka → indexer → Elasticsearch.

TradingView's web app and TradingView-API subscribe with ``={"session":...,"symbol":...}``; the
Kafka key and the document's ``symbol`` are that string as sent, ``exchange`` and ``ticker`` come
from its ``symbol`` key (real Kafka, real Elasticsearch, the library's producer and indexer).
"""

from __future__ import annotations

import orjson

from quoteflow.elastic.template import ensure_template
from quoteflow.indexer import index_ranges
from quoteflow.kafka.reader import PartitionRange
from quoteflow.quotes import validate_quote
from tests.helpers.indexing import es_sources
from tests.helpers.producing import LOG_APPEND, feed, produce, read_topic

SOL_SPEC = '={"session":"regular","symbol":"BINANCE:SOLUSDT"}'  # TradingView-API's quote form
BTC_SPEC = '={"adjustment":"splits","currency-id":"USD","session":"regular","symbol":"BINANCE:BTCUSDT"}'  # web app
ETH = "BINANCE:ETHUSDT"
IDENTITY = {SOL_SPEC: ("BINANCE", "SOLUSDT"), BTC_SPEC: ("BINANCE", "BTCUSDT"), ETH: ("BINANCE", "ETHUSDT")}


def test_spec_form_symbols_reach_kafka_and_elasticsearch_as_sent(
    make_topic, kafka_bootstrap, es_client, fresh_index_prefix
):
    topic = make_topic(1, LOG_APPEND)
    dlq = make_topic(1)
    symbols = list(IDENTITY)
    with feed(synthetic_symbols=3, rate=300, packets_per_message=3, seed=11) as server:
        summary = produce(server, symbols, topic, kafka_bootstrap, seconds=3.0)
        added = [p for _, m, p in server.stats.client_packets if m == "quote_add_symbols"]
        refused = server.stats.errors_sent["no_such_symbol"]
    assert summary["errors"] == {} and summary["dropped_symbols"] == {} and refused == 0
    assert [p[1:] for p in added] == [symbols]  # the feed saw each key as the producer was given it

    records = read_topic(kafka_bootstrap, topic, expect=summary["quotes"])
    assert len(records) == summary["quotes"] >= 60
    volumes: dict[str, list[float]] = {}
    for record in records:
        value = validate_quote(orjson.loads(record.value()))
        assert record.key() == value["symbol"].encode()
        assert (value["exchange"], value["ticker"]) == IDENTITY[value["symbol"]]
        volumes.setdefault(value["symbol"], []).append(value["volume"])
    assert set(volumes) == set(symbols)
    for symbol, seen in volumes.items():  # the synthetic feed numbers each instrument's updates 1, 2, 3 ...
        assert seen == [float(i) for i in range(1, len(seen) + 1)], f"{symbol}: duplicates or gaps in {seen[:20]}"

    ensure_template(es_client)
    indexed = index_ranges(
        {"bootstrap.servers": kafka_bootstrap},
        es_client,
        [PartitionRange(topic, 0, 0, len(records))],
        dlq_topic=dlq,
        index_prefix=fresh_index_prefix,
        group_id=f"g-{topic}",
    )
    assert indexed.indexed == len(records) and indexed.dead_lettered == 0
    docs = es_sources(es_client, fresh_index_prefix)
    assert len(docs) == len(records)
    for doc in docs.values():
        assert (doc["exchange"], doc["ticker"]) == IDENTITY[doc["symbol"]]
    # The spec string is one exact keyword: a term query finds precisely that key's documents.
    for symbol, seen in volumes.items():
        hits = es_client.count(index=f"{fresh_index_prefix}*", query={"term": {"symbol": symbol}})["count"]
        assert hits == len(seen), symbol
    tickers = es_client.count(index=f"{fresh_index_prefix}*", query={"term": {"ticker": "SOLUSDT"}})["count"]
    assert tickers == len(volumes[SOL_SPEC])
