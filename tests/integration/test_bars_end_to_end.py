"""A replay through produce puts exactly the expected bars in Kafka and Elasticsearch.

``jobs.produce`` with bars on against the local feed server (its synthetic walk, clock at 20x) writes
quotes, bars and gaps to their topics; one indexer window over the run indexes all three. In
Elasticsearch there is then exactly one document per bar, holding the newest record of that bar in
Kafka (version = its offset), and every closed bar equals the feed walk's bar.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from quoteflow import jobs
from quoteflow.bars import bar_id
from quoteflow.elastic.template import ensure_templates
from quoteflow.quotes import parse_timestamp
from quoteflow.tradingview.feed.synthetic import synthetic_universe
from tests.helpers.indexing import es_sources
from tests.helpers.producing import FAST_CLIENT, LOG_APPEND, feed, read_topic

SYMBOLS = synthetic_universe(3)


def _epoch(text: str) -> int:
    return int(parse_timestamp(text).timestamp())


def test_a_replay_through_produce_puts_exactly_the_expected_bars_in_kafka_and_es(
    make_topic: Any, kafka_bootstrap: str, es_client: Any, es_url: str
) -> None:
    from quoteflow.tradingview.feed.walk import parse_resolution

    ensure_templates(es_client)
    hexa = uuid.uuid4().hex[:10]
    pipe = jobs.Pipeline(
        kafka={"bootstrap.servers": kafka_bootstrap},
        es_args={"hosts": [es_url], "request_timeout": 60},
        topic=make_topic(1, LOG_APPEND),
        dlq_topic=make_topic(1),
        index_prefix=f"quotes-test-{hexa}-",
        group_id=f"g-{hexa}",
        bars_topic=make_topic(1, LOG_APPEND),
        bars_index_prefix=f"bars-test-{hexa}-",
        gaps_topic=make_topic(1, LOG_APPEND),
        gaps_index_prefix=f"gaps-test-{hexa}-",
    )
    try:
        start = datetime.now(UTC)
        time.sleep(0.05)
        with feed(synthetic_symbols=3, rate=50, seed=5, clock_speed=20.0, du_interval=0.2) as server:
            options = {**FAST_CLIENT, "bar_resolutions": ["1"], "history_bars": 5}
            summary = jobs.produce(pipe, url=server.url, symbols=SYMBOLS, max_seconds=6.0, **options)
            walk = server.walk
        time.sleep(0.05)
        window = jobs.index_window(pipe, start, datetime.now(UTC))

        records = read_topic(kafka_bootstrap, pipe.bars_topic, expect=summary["bars"], idle=2.0)
        assert len(records) == summary["bars"] > 0
        topics = window["topics"]
        assert topics[pipe.bars_topic]["read"] == len(records) and topics[pipe.bars_topic]["dead_lettered"] == 0
        assert window["read"] == window["indexed"] + window["stale"]  # nothing dead-lettered, nothing lost
        newest: dict[str, tuple[int, dict[str, Any]]] = {}
        for record in records:
            bar = orjson.loads(record.value())
            newest[bar_id(bar["symbol"], bar["resolution"], bar["start"])] = (record.offset(), bar)

        docs = es_sources(es_client, pipe.bars_index_prefix)
        assert set(docs) == set(newest)  # exactly one document per bar, none missing, none extra
        for doc_id, (offset, bar) in newest.items():
            doc = docs[doc_id]
            assert {k: doc[k] for k in bar} == bar and doc["kafka"]["offset"] == offset, doc_id
        minute = parse_resolution("1")
        closed = [d for d in docs.values() if d["closed"]]
        assert len(closed) >= len(SYMBOLS) * 4  # at least the history's closed bars
        for doc in closed:
            start_s = _epoch(doc["start"])
            expected = walk.wire(doc["symbol"], start_s, walk.bar(doc["symbol"], minute, start_s))
            got = [float(start_s), doc["open"], doc["high"], doc["low"], doc["close"], doc["volume"]]
            assert got == expected, doc["start"]
        assert topics[pipe.topic]["indexed"] == summary["quotes"]
    finally:
        for prefix in (pipe.index_prefix, pipe.bars_index_prefix, pipe.gaps_index_prefix):
            es_client.options(ignore_status=404).indices.delete(index=f"{prefix}*", expand_wildcards="all")
