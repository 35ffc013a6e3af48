"""The harness end to end: produce to the real broker, read back, bulk-index into the real node, search."""

from __future__ import annotations

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from elasticsearch import helpers


def test_kafka_to_elasticsearch_round_trip(kafka_bootstrap, make_topic, es_client) -> None:
    topic = make_topic(partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "linger.ms": 5})
    sent = {}
    for i in range(300):
        key = f"SYM{i % 7}"
        value = {"symbol": key, "price": 100 + i / 4, "seq": i}
        producer.produce(topic, key=key.encode(), value=orjson.dumps(value))
        sent[i] = value
        producer.poll(0)
    assert producer.flush(30) == 0

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "smoke", "enable.auto.commit": False})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(3)}
        assert sum(ends.values()) == 300
        consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
        records = []
        while len(records) < 300:
            batch = consumer.consume(300 - len(records), timeout=10)
            assert batch, f"broker returned nothing after {len(records)} of 300 records"
            for msg in batch:
                assert msg.error() is None, msg.error()
                records.append(msg)
    finally:
        consumer.close()
    # Same key, same partition: per-key order is kept.
    by_key: dict[bytes, set[int]] = {}
    for msg in records:
        by_key.setdefault(msg.key(), set()).add(msg.partition())
    assert all(len(parts) == 1 for parts in by_key.values())

    # Outside quotes-*: the strict quotes template (put by other tests) must not apply to these ad-hoc docs.
    index = f"smoke-{topic.replace('.', '-')}"
    try:
        _index_and_check(es_client, index, records, sent)
    finally:
        es_client.options(ignore_status=404).indices.delete(index=index)


def _index_and_check(es_client, index: str, records: list, sent: dict) -> None:
    def actions():
        for m in records:
            doc_id = f"{m.topic()}-{m.partition()}-{m.offset()}"
            yield {"_index": index, "_id": doc_id, "_source": orjson.loads(m.value())}

    ok, errors = helpers.bulk(es_client, actions(), chunk_size=100, refresh="wait_for")
    assert (ok, errors) == (300, [])
    assert es_client.count(index=index)["count"] == 300
    hit = es_client.search(index=index, query={"term": {"seq": 123}})["hits"]["hits"]
    assert [h["_source"] for h in hit] == [sent[123]]
    # Re-indexing with the same ids overwrites rather than duplicates.
    helpers.bulk(es_client, actions(), refresh="wait_for")
    assert es_client.count(index=index)["count"] == 300
    stats = es_client.search(index=index, size=0, aggs={"max_price": {"max": {"field": "price"}}})
    assert stats["aggregations"]["max_price"]["value"] == 100 + 299 / 4
