"""What the e2e tests read back on their own: Kafka offsets and records (plain confluent-kafka), and Airflow writes.

Deliberately independent of the library's range reader, so a bug there cannot make a test agree with itself.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime
from typing import Any

PROBE_GROUP = "quoteflow-e2e-probe"  # never committed to: reading with assign() only


def airflow_write(pipeline: Any, method: str, path: str, body: dict) -> dict:
    """POST/PATCH a JSON body to an Airflow REST path as admin; the decoded answer."""
    req = urllib.request.Request(
        f"{pipeline.airflow_url}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {pipeline.token()}"},
        method=method,
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def epoch_ms(text: str) -> float:
    """An ISO-8601 timestamp of Airflow's API or logs as epoch milliseconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000


def _consumer(bootstrap: str, group: str = PROBE_GROUP) -> Any:
    from confluent_kafka import Consumer

    return Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "error"}
    )


def offsets_at(bootstrap: str, topic: str, moment_ms: int) -> dict[int, int]:
    """Per partition, the first offset whose LogAppendTime is at or after ``moment_ms`` (the log end if none)."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(bootstrap)
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        found = consumer.offsets_for_times([TopicPartition(topic, p, moment_ms) for p in partitions], timeout=15)
        out = {}
        for tp in found:
            out[tp.partition] = tp.offset if tp.offset >= 0 else consumer.get_watermark_offsets(tp, timeout=10)[1]
        return out
    finally:
        consumer.close()


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition (-1001 when it has none); reading them joins no group."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(bootstrap, group)
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        return {
            tp.partition: tp.offset
            for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=15)
        }
    finally:
        consumer.close()


def read_records(bootstrap: str, topic: str, starts: dict[int, int], ends: dict[int, int]) -> list[Any]:
    """Every record of ``[starts[p], ends[p])`` of each partition, read with ``assign()``."""
    from confluent_kafka import TopicPartition

    want = {p: ends[p] for p in starts if ends[p] > starts[p]}
    if not want:
        return []
    consumer = _consumer(bootstrap)
    records: list[Any] = []
    try:
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in want])
        idle = 0
        while want and idle < 30:
            batch = consumer.consume(1000, timeout=1.0)
            idle = 0 if batch else idle + 1
            for msg in batch:
                if msg.error() is not None:
                    raise RuntimeError(f"reading {topic}: {msg.error()}")
                p = msg.partition()
                if p in want and msg.offset() < want[p]:
                    records.append(msg)
                    if msg.offset() + 1 >= want[p]:
                        del want[p]
        if want:
            raise RuntimeError(f"{topic}: stalled before the ends {want} (read {len(records)} records)")
        return records
    finally:
        consumer.close()
