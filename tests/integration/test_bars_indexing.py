"""Bars and gaps through the indexer, backfill and reconcile on real Kafka and Elasticsearch.

One document per bar, versioned by offset: re-runs change nothing, replays of older offsets leave
the newer bar in place and count as stale; bad bars and gaps are dead-lettered with their origin;
windows, backfill and reconcile cover the bars and gaps topics like the quotes topic.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from quoteflow import jobs
from quoteflow.bars import bar_id
from quoteflow.elastic.template import ensure_templates
from quoteflow.indexer import index_window, plan_window
from quoteflow.kafka.admin import TopicConfigError
from quoteflow.streams import Kind, Names, Stream
from tests.helpers.indexing import (
    LOG_APPEND,
    bar_record,
    dead_letters,
    delete_ids,
    es_sources,
    gap_record,
    produce,
    quote_value,
)

SOL, BTC = "BINANCE:SOLUSDT", "BINANCE:BTCUSDT"


@pytest.fixture
def env(kafka_bootstrap, es_client, es_url, make_topic) -> Iterator[dict[str, Any]]:
    """Quotes, bars (2 partitions), gaps and DLQ topics; quotes-/bars-/gaps-test prefixes (deleted after)."""
    ensure_templates(es_client)
    hexa = uuid.uuid4().hex[:10]
    quotes, bars, gaps = make_topic(2, LOG_APPEND), make_topic(2, LOG_APPEND), make_topic(1, LOG_APPEND)
    dlq = make_topic(1)
    prefixes = {k: f"{k}-test-{hexa}-" for k in ("quotes", "bars", "gaps")}
    names = Names(
        (
            Stream(Kind.QUOTES, quotes, prefixes["quotes"]),
            Stream(Kind.BARS, bars, prefixes["bars"]),
            Stream(Kind.GAPS, gaps, prefixes["gaps"]),
        ),
        dlq,
        f"g-{hexa}",
    )
    pipe = jobs.Pipeline(
        kafka={"bootstrap.servers": kafka_bootstrap},
        es_args={"hosts": [es_url], "request_timeout": 60},
        topic=quotes,
        dlq_topic=dlq,
        index_prefix=prefixes["quotes"],
        group_id=names.group_id,
        bars_topic=bars,
        bars_index_prefix=prefixes["bars"],
        gaps_topic=gaps,
        gaps_index_prefix=prefixes["gaps"],
    )
    yield {
        "cfg": {"bootstrap.servers": kafka_bootstrap},
        "bootstrap": kafka_bootstrap,
        "es": es_client,
        "names": names,
        "pipe": pipe,
        "quotes": quotes,
        "bars": bars,
        "gaps": gaps,
        "dlq": dlq,
        "prefix": prefixes,
    }
    for prefix in prefixes.values():
        es_client.options(ignore_status=404).indices.delete(index=f"{prefix}*", expand_wildcards="all")


def _now() -> datetime:
    time.sleep(0.05)
    return datetime.now(UTC)


def _bar_updates() -> list[tuple[bytes, bytes]]:
    """Two series; the forming bar of each updated three times, then closed; one bar closed once."""
    records = []
    for symbol in (SOL, BTC):
        for close in (100.0, 101.0, 102.5):
            records.append(bar_record(symbol, "2026-12-02T02:41:00Z", close, open_=100.0, closed=False))
        records.append(bar_record(symbol, "2026-12-02T02:41:00Z", 103.0, open_=100.0, closed=True))
        records.append(bar_record(symbol, "2026-11-30T23:59:00Z", 90.0, origin="history"))
    return records


def _versions(es, prefix: str) -> dict[str, int]:
    es.indices.refresh(index=f"{prefix}*")
    hits = es.search(index=f"{prefix}*", size=1000, version=True, query={"match_all": {}})["hits"]["hits"]
    return {h["_id"]: h["_version"] for h in hits}


def test_bars_are_one_document_per_bar_newest_offset_wins_and_reruns_change_nothing(env) -> None:
    es, names = env["es"], env["names"]
    start = _now()
    delivered = produce(env["bootstrap"], env["bars"], _bar_updates())
    end = _now()
    first = index_window(env["cfg"], es, start, end, names)
    assert (first.read, first.indexed, first.stale, first.dead_lettered) == (10, 10, 0, 0)
    assert first.topics[env["bars"]] == {"read": 10, "indexed": 10, "stale": 0, "dead_lettered": 0}

    docs = es_sources(es, env["prefix"]["bars"])
    sol = bar_id(SOL, "1", "2026-12-02T02:41:00Z")
    assert set(docs) == {sol, bar_id(BTC, "1", "2026-12-02T02:41:00Z"), bar_id(SOL, "1", "2026-11-30T23:59:00Z"),
                         bar_id(BTC, "1", "2026-11-30T23:59:00Z")}  # fmt: skip
    newest = {}
    for partition, offset, _key, value in delivered:
        bar = orjson.loads(value)
        newest[bar_id(bar["symbol"], "1", bar["start"])] = (partition, offset, bar)
    for doc_id, (partition, offset, bar) in newest.items():
        doc = docs[doc_id]
        assert {k: doc[k] for k in bar} == bar  # the newest record's values: close 103.0, closed true
        assert doc["kafka"]["offset"] == offset and doc["kafka"]["partition"] == partition
        assert doc["@timestamp"] == bar["start"]
    assert docs[sol]["close"] == 103.0 and docs[sol]["closed"] is True
    indices = set(es.indices.get(index=f"{env['prefix']['bars']}*"))
    assert indices == {f"{env['prefix']['bars']}2026.12", f"{env['prefix']['bars']}2026.11"}  # monthly, by start
    versions = _versions(es, env["prefix"]["bars"])
    assert versions == {doc_id: offset for doc_id, (_, offset, _) in newest.items()}  # version = offset

    # A re-run of the window: each bar's newest record rewrites its own version (external_gte allows equal),
    # the six older updates meet a newer version (409) and count as stale. Nothing changes.
    rerun = index_window(env["cfg"], es, start, end, names)
    assert (rerun.read, rerun.indexed, rerun.stale, rerun.dead_lettered) == (10, 4, 6, 0)
    assert es_sources(es, env["prefix"]["bars"]) == docs
    assert _versions(es, env["prefix"]["bars"]) == versions


def test_replaying_older_offsets_leaves_the_newer_bar_and_counts_409s_as_stale(env) -> None:
    es, names = env["es"], env["names"]
    start = _now()
    # All on partition 0: offsets 0..4 are SOL's records (three updates, the close, a history bar).
    delivered = produce(env["bootstrap"], env["bars"], _bar_updates()[:5], partition=0)
    index_window(env["cfg"], es, start, _now(), names)
    docs = es_sources(es, env["prefix"]["bars"])
    sol = bar_id(SOL, "1", "2026-12-02T02:41:00Z")
    assert docs[sol]["close"] == 103.0 and docs[sol]["kafka"]["offset"] == 3

    # Replay offsets [0, 3): the three older versions of the SOL bar. Each meets a newer one: 409, stale.
    older = jobs.backfill(env["pipe"], mode="offsets", start=0, end=3, partitions=[0], stream="bars")
    assert (older["read"], older["indexed"], older["stale"], older["dead_lettered"]) == (3, 0, 3, 0)
    assert older["topics"][env["bars"]]["stale"] == 3
    assert es_sources(es, env["prefix"]["bars"]) == docs  # the newer bar stayed
    assert dead_letters(env["bootstrap"], env["dlq"]) == []  # a stale write is no error and no dead letter

    # A replay including the newest records rewrites them at the same versions: indexed, nothing changes.
    whole = jobs.backfill(env["pipe"], mode="offsets", start=0, end=len(delivered), partitions=[0], stream="bars")
    assert (whole["indexed"], whole["stale"]) == (2, 3)
    assert es_sources(es, env["prefix"]["bars"]) == docs


def test_bad_bars_and_gaps_are_dead_lettered_with_their_origin_and_reason(env) -> None:
    es, names = env["es"], env["names"]
    good_key, good = bar_record(SOL, "2026-12-02T02:41:00Z", 100.0)
    bar = orjson.loads(good)
    long_symbol = "€" * 250  # 750 bytes in UTF-8: Elasticsearch would refuse the whole request for its _id
    bad_bars = [
        (b"k", b'{"schema": 1, "open": 1'),  # invalid_json
        (b"k", orjson.dumps({**bar, "low": 200.0})),  # low above open and close: schema
        (b"k", orjson.dumps({**bar, "open": None})),  # a null price: schema
        (b"k", orjson.dumps({**bar, "extra": 1})),  # unknown field: schema
        bar_record(long_symbol, "2026-12-02T02:41:00Z", 100.0),  # schema: its id is over 512 bytes
    ]
    gap_key, gap = gap_record(time.time() - 60, time.time() - 30)
    bad_gaps = [(b"g", orjson.dumps({**orjson.loads(gap), "cause": "boredom"})), (b"g", b"not json")]
    start = _now()
    bars = produce(env["bootstrap"], env["bars"], [(good_key, good), *bad_bars], partition=0)
    gaps = produce(env["bootstrap"], env["gaps"], [(gap_key, gap), *bad_gaps])
    summary = index_window(env["cfg"], es, start, _now(), names)
    assert (summary.read, summary.indexed, summary.dead_lettered) == (9, 2, 7)
    assert summary.dead_letter_reasons == {"invalid_json": 2, "schema": 5}
    assert summary.topics[env["bars"]]["dead_lettered"] == 5 and summary.topics[env["gaps"]]["dead_lettered"] == 2

    letters = {(d.origin_topic, d.origin_offset): d for d in dead_letters(env["bootstrap"], env["dlq"])}
    want = {(env["bars"], o) for _, o, _, _ in bars[1:]} | {(env["gaps"], o) for _, o, _, _ in gaps[1:]}
    assert set(letters) == want  # one DLQ for all streams; origin.topic says which
    assert letters[(env["bars"], bars[5][1])].reason == "schema"
    assert "over Elasticsearch's 512" in letters[(env["bars"], bars[5][1])].detail
    assert (
        letters[(env["bars"], bars[2][1])].reason == "schema"
        and "prices out of order" in letters[(env["bars"], bars[2][1])].detail
    )
    assert (
        letters[(env["gaps"], gaps[1][1])].reason == "schema" and "cause" in letters[(env["gaps"], gaps[1][1])].detail
    )
    assert letters[(env["bars"], bars[1][1])].value == bad_bars[0][1]  # the original bytes, untouched

    # A re-run writes no second copy of any letter.
    index_window(env["cfg"], es, start, _now(), names)
    assert len(dead_letters(env["bootstrap"], env["dlq"])) == 7
    assert set(es_sources(es, env["prefix"]["gaps"])) == {orjson.loads(gap)["gap_id"]}

    # Replay sends each letter back to its own topic (the DLQ is shared), never bars into the quotes.
    replayed = jobs.dlq_replay(env["pipe"])
    assert replayed["replayed"] == 7
    assert _high(env, env["bars"], 0) + _high(env, env["bars"], 1) == len(bars) + 5
    assert _high(env, env["gaps"], 0) == len(gaps) + 2
    assert _high(env, env["quotes"], 0) == _high(env, env["quotes"], 1) == 0


def _high(env, topic: str, partition: int) -> int:
    from quoteflow.kafka.clients import make_consumer
    from quoteflow.kafka.reader import watermarks

    consumer = make_consumer(env["cfg"], "test-watermarks")
    try:
        return watermarks(consumer, topic, partition)[1]
    finally:
        consumer.close()


def test_windows_tile_all_three_topics_and_reconcile_repairs_bar_and_gap_holes(env) -> None:
    es, pipe = env["es"], env["pipe"]
    bounds = [_now()]
    produced: list = []
    for i in range(3):
        produced += produce(env["bootstrap"], env["quotes"], [quote_value(i * 10 + j) for j in range(10)])
        minute = f"2026-{9 + i:02d}-02T03:10:00Z"  # each window's bars in their own monthly index
        produced += produce(
            env["bootstrap"], env["bars"], [bar_record(SOL, minute, 100.0 + i), bar_record(BTC, minute, 50.0 + i)]
        )
        produced += produce(env["bootstrap"], env["gaps"], [gap_record(time.time() - 100 + i, time.time() - 90 + i)])
        bounds.append(_now())
    windows = [jobs.index_window(pipe, a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
    assert [(w["read"], w["indexed"]) for w in windows] == [(13, 13)] * 3  # each record in exactly one window
    assert all(set(w["topics"]) == {env["quotes"], env["bars"], env["gaps"]} for w in windows)
    bars_before = es_sources(es, env["prefix"]["bars"])
    gaps_before = es_sources(es, env["prefix"]["gaps"])
    assert len(bars_before) == 6 and len(gaps_before) == 3

    clean = jobs.reconcile(pipe, repair=False, cross_check_hours=0)
    assert clean["ok"] and clean["remaining"] == 0
    assert {k: s["missing"] for k, s in clean["streams"].items()} == {"quotes": 0, "bars": 0, "gaps": 0}
    assert sum(p["expected"] for p in clean["streams"]["bars"]["partitions"]) == 6

    # Plant holes: two bar documents (their month's index dropped, as retention does: deleting a versioned
    # document by id would leave a tombstone at a higher version for index.gc_deletes) and one gap document.
    es.indices.delete(index=f"{env['prefix']['bars']}2026.09")
    assert delete_ids(es, env["prefix"]["gaps"], sorted(gaps_before)[:1]) == 1
    found = jobs.reconcile(pipe, repair=False, cross_check_hours=0)
    assert not found["ok"] and found["remaining"] == 3
    assert found["streams"]["bars"]["missing"] == 2 and found["streams"]["gaps"]["missing"] == 1
    assert found["missing"] == 0  # the top level stays the quotes stream's report
    repaired = jobs.reconcile(pipe, repair=True, cross_check_hours=0)
    assert repaired["ok"] and repaired["streams"]["bars"]["repaired"] == 2
    assert es_sources(es, env["prefix"]["bars"]) == bars_before
    assert es_sources(es, env["prefix"]["gaps"]) == gaps_before

    # Time backfill of the bars stream: the same documents again, nothing committed or duplicated.
    again = jobs.backfill(pipe, mode="time", start=bounds[0].isoformat(), end=bounds[-1].isoformat(), stream="bars")
    assert (again["read"], again["indexed"], again["stale"]) == (6, 6, 0)
    assert es_sources(es, env["prefix"]["bars"]) == bars_before


def test_reconcile_counts_a_document_left_at_an_older_version_as_a_hole(env) -> None:
    es, pipe = env["es"], env["pipe"]
    start = _now()
    produce(env["bootstrap"], env["bars"], _bar_updates()[:4], partition=0)  # one bar, offsets 0..3
    end = _now()
    jobs.index_window(pipe, start, end)
    sol = bar_id(SOL, "1", "2026-12-02T02:41:00Z")
    # Leave the bar at offset 1's content, as a lost newest write would: its index dropped, offset 1 re-indexed.
    es.indices.delete(index=f"{env['prefix']['bars']}2026.12")
    jobs.backfill(pipe, mode="offsets", start=1, end=2, partitions=[0], stream="bars")
    assert es_sources(es, env["prefix"]["bars"])[sol]["kafka"]["offset"] == 1
    # Only the records of the last recent_hours are read: a span that ends before them sees nothing.
    time.sleep(1.5)
    narrow = jobs.reconcile(pipe, repair=False, until="high", cross_check_hours=0, recent_hours=1 / 3600)
    assert narrow["ok"] and narrow["streams"]["bars"]["partitions"][0]["expected"] == 0
    found = jobs.reconcile(pipe, repair=True, until="high", cross_check_hours=0)
    bars = found["streams"]["bars"]
    assert bars["missing"] == 1 and bars["holes"] == [{"topic": env["bars"], "partition": 0, "start": 3, "end": 4}]
    assert found["ok"] and es_sources(es, env["prefix"]["bars"])[sol]["kafka"]["offset"] == 3


def test_a_missing_bars_topic_is_skipped_but_a_create_time_one_is_refused(env, make_topic) -> None:
    names = env["names"]
    start = _now()
    produce(env["bootstrap"], env["quotes"], [quote_value(i) for i in range(5)])
    end = _now()
    missing = Names(
        (names.streams[0], Stream(Kind.BARS, f"absent.{uuid.uuid4().hex[:8]}", env["prefix"]["bars"])),
        names.dlq_topic,
        names.group_id,
    )
    summary = index_window(env["cfg"], env["es"], start, end, missing)
    assert summary.read == summary.indexed == 5 and set(summary.topics) == {env["quotes"]}

    create_time = make_topic(1, {"message.timestamp.type": "CreateTime"})
    refused = Names((names.streams[0], Stream(Kind.BARS, create_time, env["prefix"]["bars"])), names.dlq_topic)
    with pytest.raises(TopicConfigError, match=rf"{create_time}.*LogAppendTime.*quotes_setup"):
        plan_window(env["cfg"], start, end, refused)


def test_setup_creates_bars_and_gaps_topics_and_templates_idempotently(
    kafka_bootstrap, kafka_admin, es_client, es_url
) -> None:
    from quoteflow.kafka.admin import describe_topic_config

    hexa = uuid.uuid4().hex[:10]
    pipe = jobs.Pipeline(
        kafka={"bootstrap.servers": kafka_bootstrap},
        es_args={"hosts": [es_url], "request_timeout": 60},
        topic=f"test.q.{hexa}",
        dlq_topic=f"test.dlq.{hexa}",
        bars_topic=f"test.bars.{hexa}",
        gaps_topic=f"test.gaps.{hexa}",
    )
    topics = [pipe.topic, pipe.dlq_topic, pipe.bars_topic, pipe.gaps_topic]
    try:
        settings = jobs.TopicSettings(partitions=2, retention_hours=5)
        first = jobs.setup_topics(pipe, settings)
        assert {name: r["created"] for name, r in first.items()} == dict.fromkeys(topics, True)
        for topic, partitions in ((pipe.bars_topic, 2), (pipe.gaps_topic, 1)):
            config = describe_topic_config(kafka_admin, topic)
            assert config["message.timestamp.type"] == "LogAppendTime"
            assert config["retention.ms"] == str(5 * 3600 * 1000)
            assert len(kafka_admin.list_topics(topic, timeout=10).topics[topic].partitions) == partitions
        second = jobs.setup_topics(pipe, settings)
        assert not any(r["changed"] for r in second.values())

        # Planted drift on the bars topic (CreateTime) is put back, and said so.
        from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

        entry = ConfigEntry("message.timestamp.type", "CreateTime", incremental_operation=AlterConfigOpType.SET)
        resource = ConfigResource("topic", pipe.bars_topic, incremental_configs=[entry])
        kafka_admin.incremental_alter_configs([resource])[resource].result(timeout=30)
        fixed = jobs.setup_topics(pipe, settings)
        assert fixed[pipe.bars_topic]["changes"] == ["message.timestamp.type: 'CreateTime' -> 'LogAppendTime'"]
    finally:
        for future in kafka_admin.delete_topics(topics, operation_timeout=30).values():
            future.result(timeout=60)

    jobs.setup_template(pipe)  # whatever state the shared cluster was in: now as wanted
    assert jobs.setup_template(pipe) == "unchanged"
    bars = es_client.indices.get_index_template(name="bars")["index_templates"][0]["index_template"]
    assert bars["index_patterns"] == ["bars-*"]
    assert bars["template"]["mappings"]["dynamic"] == "strict"
    assert bars["template"]["mappings"]["properties"]["closed"] == {"type": "boolean"}
    gaps = es_client.indices.get_index_template(name="gaps")["index_templates"][0]["index_template"]
    assert gaps["index_patterns"] == ["gaps-*"]
    assert gaps["template"]["mappings"]["properties"]["symbols"] == {"type": "keyword"}


def test_window_summary_names_each_stream(env) -> None:
    start = _now() - timedelta(seconds=1)
    groups = jobs.plan(env["pipe"], start, _now(), groups=2)
    topics = {r["topic"] for group in groups for r in group}
    assert topics == {env["quotes"], env["bars"], env["gaps"]}  # one plan covers all three streams
    parts = [jobs.index_group(env["pipe"], g) for g in groups]
    total = jobs.finish(env["pipe"], parts, start, _now())
    assert total["read"] == 0 and set(total["topics"]) == topics
