"""Every record of a window ends up in Elasticsearch exactly once, or in the DLQ with its reason — real Kafka and ES."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import orjson
import pytest

from quoteflow.elastic.template import ensure_template
from quoteflow.indexer import index_ranges, index_window, plan_window
from quoteflow.kafka.admin import TopicConfigError, ensure_topic, quotes_topic_spec
from quoteflow.kafka.reader import PartitionRange
from quoteflow.streams import Names
from tests.helpers.indexing import (
    LOG_APPEND,
    committed,
    dead_letters,
    es_count,
    es_sources,
    expected_docs,
    poison_values,
    produce,
    quote_value,
)


@pytest.fixture
def env(kafka_bootstrap, es_client, make_topic, fresh_index_prefix):
    ensure_template(es_client)
    topic = make_topic(partitions=3, config=LOG_APPEND)
    dlq = make_topic(partitions=1)
    return {
        "cfg": {"bootstrap.servers": kafka_bootstrap},
        "es": es_client,
        "topic": topic,
        "dlq": dlq,
        "prefix": fresh_index_prefix,
        "group": f"g-{topic}",
        "bootstrap": kafka_bootstrap,
    }


def _now() -> datetime:
    return datetime.now(UTC)


def _kw(env, **changes: str) -> dict:
    """The names of the test's quotes stream, as the one value the indexer, backfill and reconcile take."""
    names = {"topic": env["topic"], "index_prefix": env["prefix"], "dlq_topic": env["dlq"], "group_id": env["group"]}
    return {"names": Names.quotes_only(**{**names, **changes})}


def test_windows_index_each_record_once_and_reruns_change_nothing(env) -> None:
    es, topic = env["es"], env["topic"]
    bounds = [_now()]
    delivered = []
    for burst in range(3):
        time.sleep(0.05)
        delivered += produce(env["bootstrap"], topic, [quote_value(burst * 1000 + i) for i in range(400)])
        time.sleep(0.05)
        bounds.append(_now())
    time.sleep(0.05)
    summaries = [index_window(env["cfg"], es, a, b, **_kw(env)) for a, b in zip(bounds, bounds[1:], strict=False)]

    assert [s.read for s in summaries] == [400, 400, 400]  # each burst in exactly its own window
    assert sum(s.indexed for s in summaries) == 1200 and all(s.dead_lettered == 0 for s in summaries)
    docs = es_sources(es, env["prefix"])
    want = expected_docs(topic, delivered)
    assert len(docs) == len(want) == 1200
    assert {i: (d["symbol"], d["price"]) for i, d in docs.items()} == want
    one = docs[f"{topic}-{delivered[5][0]}-{delivered[5][1]}"]
    assert one["kafka"]["partition"] == delivered[5][0] and one["kafka"]["offset"] == delivered[5][1]
    assert one["@timestamp"] == one["received_at"] and one["kafka"]["topic"] == topic
    ends = {}
    for p, o, _, _ in delivered:
        ends[p] = max(ends.get(p, 0), o + 1)
    assert committed(env["bootstrap"], topic, env["group"], 3) == ends

    reruns = [index_window(env["cfg"], es, a, b, **_kw(env)) for a, b in zip(bounds, bounds[1:], strict=False)]
    assert [s.read for s in reruns] == [400, 400, 400]
    assert all(s.committed == {} for s in reruns)  # already committed: offsets never move backwards
    assert es_sources(es, env["prefix"]) == docs
    assert committed(env["bootstrap"], topic, env["group"], 3) == ends


def test_chunks_are_bounded_by_count_and_by_bytes(env) -> None:
    delivered = produce(env["bootstrap"], env["topic"], [quote_value(i) for i in range(300)], partition=0)
    ranges = [PartitionRange(env["topic"], 0, 0, len(delivered))]
    kw = {"dlq_topic": env["dlq"], "index_prefix": env["prefix"], "group_id": env["group"]}
    by_count = index_ranges(env["cfg"], env["es"], ranges, chunk_docs=25, **kw)
    assert by_count.indexed == 300 and by_count.bulk_requests == 12
    line_bytes = len(orjson.dumps(next(iter(es_sources(env["es"], env["prefix"]).values())))) + 80
    by_bytes = index_ranges(env["cfg"], env["es"], ranges, chunk_docs=10_000, chunk_bytes=20 * line_bytes, **kw)
    assert by_bytes.indexed == 300 and 300 / 20 <= by_bytes.bulk_requests <= 300 / 10
    assert es_count(env["es"], env["prefix"]) == 300


def test_poison_and_mapping_rejections_go_to_the_dlq_and_good_records_are_indexed(env) -> None:
    es, topic = env["es"], env["topic"]
    # An index for 2031-01-01 whose mapping disagrees with the contract: its documents are rejected per item.
    es.indices.create(index=f"{env['prefix']}2031.01.01", mappings={"properties": {"symbol": {"type": "long"}}})
    start = _now()
    time.sleep(0.05)
    good = [quote_value(i) for i in range(200)]
    poison = poison_values()
    rejected = quote_value(999, event_time="2031-01-01T00:00:00Z")
    records = good[:100] + [(b"bad", v) for _, v in poison] + [rejected] + good[100:]
    delivered = produce(env["bootstrap"], topic, records, partition=1)
    time.sleep(0.05)
    summary = index_window(env["cfg"], es, start, _now(), **_kw(env))

    assert (summary.read, summary.indexed, summary.dead_lettered) == (205, 200, 5)
    assert summary.dead_letter_reasons == {"invalid_json": 1, "schema": 3, "mapping": 1}
    assert len(es_sources(es, env["prefix"])) == 200
    letters = {d.origin_offset: d for d in dead_letters(env["bootstrap"], env["dlq"])}
    assert len(letters) == 5
    for (_, want_value), (partition, offset, _, value) in zip([*poison, rejected], delivered[100:105], strict=True):
        letter = letters[offset]
        assert (letter.origin_topic, letter.origin_partition) == (topic, partition)
        assert letter.value == value == want_value and letter.detail
    reasons = [letters[o].reason for _, o, _, _ in delivered[100:105]]
    assert reasons == ["invalid_json", "schema", "schema", "schema", "mapping"]
    rerun = index_window(env["cfg"], es, start, _now(), **_kw(env))
    assert (rerun.read, rerun.indexed, rerun.dead_lettered) == (205, 200, 5)
    assert len(dead_letters(env["bootstrap"], env["dlq"])) == 5  # a re-run writes no second copy
    assert "price" in letters[delivered[101][1]].detail and "surprise" in letters[delivered[102][1]].detail
    assert (
        "document_parsing_exception" in letters[delivered[104][1]].detail
        or "mapper" in letters[delivered[104][1]].detail
    )


def test_a_createtime_topic_is_refused_before_any_data_moves(env, make_topic, kafka_admin) -> None:
    topic = make_topic(partitions=1, config={"message.timestamp.type": "CreateTime"})
    start = _now()
    produce(env["bootstrap"], topic, [quote_value(1)])
    with pytest.raises(TopicConfigError, match="LogAppendTime") as info:
        index_window(env["cfg"], env["es"], start, _now(), **_kw(env, topic=topic))
    assert "quotes_setup" in str(info.value) and topic in str(info.value)
    assert es_count(env["es"], env["prefix"]) == 0
    # quotes_setup's admin step fixes it, logs what changed, and is a no-op the second time.
    first = ensure_topic(kafka_admin, quotes_topic_spec(topic, 1, 3_600_000))
    assert any("message.timestamp.type" in change for change in first.changes) and not first.created
    second = ensure_topic(kafka_admin, quotes_topic_spec(topic, 1, 3_600_000))
    assert not second.changed
    plan = plan_window(env["cfg"], start, _now(), topic=topic)
    assert [r["partition"] for group in plan for r in group] == [0]


def test_window_in_the_future_is_refused(env) -> None:
    from quoteflow.settings import ConfigError

    now = _now()
    with pytest.raises(ConfigError, match="in the future"):
        plan_window(env["cfg"], now, now.replace(year=now.year + 1), topic=env["topic"])


def test_the_window_summary_lag_is_the_records_appended_after_the_window(env) -> None:
    from confluent_kafka import Consumer, TopicPartition

    from quoteflow.indexer import finish_window

    topic = env["topic"]
    start = _now()
    time.sleep(0.05)
    produce(env["bootstrap"], topic, [quote_value(i) for i in range(20)], partition=0)
    time.sleep(0.05)
    end = _now()
    time.sleep(0.05)
    produce(env["bootstrap"], topic, [quote_value(100 + i) for i in range(7)], partition=0)
    produce(env["bootstrap"], topic, [quote_value(200 + i) for i in range(5)], partition=1)  # empty in the window

    # As the DAG runs it: plan → one index_ranges per group → finish.
    groups = plan_window(env["cfg"], start, end, topic=topic, groups=2, group_id=env["group"])
    assert sorted(len(g) for g in groups) == [1, 2] and any(all(r["start"] == r["end"] for r in g) for g in groups)
    parts = [
        index_ranges(env["cfg"], env["es"], g, dlq_topic=env["dlq"], index_prefix=env["prefix"], group_id=env["group"])
        for g in groups
    ]
    assert {p.lag_records for p in parts} == {7, 5}  # the group with nothing to read still sees partition 1's lag
    summaries = [p.to_dict() for p in parts]
    result = finish_window(env["cfg"], summaries, start, end, topic=topic, group_id=env["group"]).to_dict()
    assert (result["read"], result["indexed"], result["lag_records"]) == (20, 20, 12)

    # Independently: the log end offsets minus what the group committed for the window.
    after = committed(env["bootstrap"], topic, env["group"], 3)
    reader = Consumer({"bootstrap.servers": env["bootstrap"], "group.id": "test-lag-reader"})
    try:
        highs = {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=15)[1] for p in range(3)}
    finally:
        reader.close()
    assert highs == {0: 27, 1: 5, 2: 0} and after == {0: 20, 1: 0, 2: 0}
    assert result["lag_records"] == sum(highs[p] - after[p] for p in range(3))
