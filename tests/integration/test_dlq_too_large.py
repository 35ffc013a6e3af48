"""Records as large as the topic accepts: indexed or dead-lettered as ``too_large``, never a failed window.

Sizes are derived from the topics' own ``max.message.bytes`` (read back from the broker), and the
broker itself confirms each size is the largest it accepts: one byte more is refused.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import orjson
import pytest
from confluent_kafka import KafkaError, Producer

from quoteflow.elastic.template import ensure_template
from quoteflow.indexer import index_window
from quoteflow.kafka.admin import describe_topic_config
from quoteflow.kafka.dlq import (
    TOO_LARGE,
    TOO_LARGE_KEY_BYTES,
    TOO_LARGE_VALUE_BYTES,
    DeadLetterWriter,
    list_dead_letters,
    record_batch_bytes,
    replay_dead_letters,
)
from quoteflow.quotes import SCHEMA_HEADER
from quoteflow.reconcile import reconcile
from tests.helpers.indexing import LOG_APPEND, dead_letters, es_sources, produce, quote_value

KEY = b"BINANCE:SOLUSDT"
BIG = {"message.max.bytes": 4 * 1024 * 1024}  # the test producer must not be what limits the size


def _limit(admin, topic: str) -> int:
    return int(describe_topic_config(admin, topic)["max.message.bytes"])


def _largest_value(limit: int, key: bytes | None, headers) -> int:
    """The largest value that fits a one-record batch of ``limit`` bytes with this key and headers."""
    n = limit - record_batch_bytes(key, b"", headers)
    while record_batch_bytes(key, bytes(n), headers) > limit:
        n -= 1
    return n


def _refused_by_broker(bootstrap: str, topic: str, key: bytes, value: bytes) -> KafkaError | None:
    """Produce one record with a plain (non-idempotent) producer; the broker's error, or None if accepted."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", **BIG})
    outcome: list[KafkaError | None] = []
    producer.produce(topic, key=key, value=value, headers=[SCHEMA_HEADER], on_delivery=lambda e, m: outcome.append(e))
    assert producer.flush(30) == 0
    return outcome[0]


def _huge_quote(size: int) -> bytes:
    """A valid Quote v1 value of exactly ``size`` bytes (its ``currency`` is a very long string)."""
    data = orjson.loads(quote_value(7)[1])
    data["currency"] = ""
    data["currency"] = "X" * (size - len(orjson.dumps(data)))
    value = orjson.dumps(data)
    assert len(value) == size
    return value


@pytest.fixture
def env(kafka_bootstrap, kafka_admin, es_client, make_topic, fresh_index_prefix):
    ensure_template(es_client)  # strict keyword mapping: a megabyte-long string is refused by Elasticsearch
    topic = make_topic(partitions=1, config=LOG_APPEND)
    return {
        "cfg": {"bootstrap.servers": kafka_bootstrap},
        "bootstrap": kafka_bootstrap,
        "admin": kafka_admin,
        "es": es_client,
        "topic": topic,
        "prefix": fresh_index_prefix,
        "group": f"g-{topic}",
        "make_topic": make_topic,
    }


def _window(env, dlq: str, records) -> tuple[list, object, datetime, datetime]:
    start = datetime.now(UTC)
    time.sleep(0.05)
    delivered = produce(env["bootstrap"], env["topic"], records, config=BIG)
    time.sleep(0.05)
    end = datetime.now(UTC)
    kw = {"topic": env["topic"], "dlq_topic": dlq, "index_prefix": env["prefix"], "group_id": env["group"]}
    return delivered, index_window(env["cfg"], env["es"], start, end, **kw), start, end


def test_records_at_the_topic_limit_are_dead_lettered_too_large_with_origin(env) -> None:
    dlq = env["make_topic"](partitions=1)
    limit = _limit(env["admin"], env["topic"])
    size = _largest_value(limit, KEY, [SCHEMA_HEADER])
    assert size > 1_000_000  # past librdkafka's default message.max.bytes: the case seen in production
    # The broker agrees this is the topic's edge: one byte more is refused, this size is accepted.
    refused = _refused_by_broker(env["bootstrap"], env["topic"], KEY, bytes(size + 1))
    assert refused is not None and refused.code() == KafkaError.MSG_SIZE_TOO_LARGE
    invalid = b"{" + b"x" * (size - 1)
    huge_quote = _huge_quote(size)
    records = [quote_value(0), (KEY, invalid), (KEY, huge_quote), quote_value(1)]

    delivered, summary, start, end = _window(env, dlq, records)

    assert (summary.read, summary.indexed, summary.dead_lettered, summary.too_large) == (4, 2, 2, 2)
    assert summary.dead_letter_reasons == {"invalid_json": 1, "mapping": 1}
    offsets = {value: offset for _, offset, _, value in delivered}
    assert set(es_sources(env["es"], env["prefix"])) == {
        f"{env['topic']}-0-{offsets[v]}" for _, v in (records[0], records[3])
    }
    letters = dead_letters(env["bootstrap"], dlq)
    dlq_limit = _limit(env["admin"], dlq)
    by_offset = {letter.origin_offset: letter for letter in letters}
    assert len(letters) == 2 and set(by_offset) == {offsets[invalid], offsets[huge_quote]}
    for original, original_reason in ((invalid, "invalid_json"), (huge_quote, "mapping")):
        letter = by_offset[offsets[original]]
        assert (letter.origin_topic, letter.origin_partition) == (env["topic"], 0)
        assert (letter.reason, letter.original_reason, letter.original_size) == (TOO_LARGE, original_reason, size)
        assert letter.key == KEY and 0 < len(letter.value) <= TOO_LARGE_VALUE_BYTES
        assert original.startswith(letter.value)
        assert f"max.message.bytes ({dlq_limit})" in letter.detail
    assert "failed to parse field [currency]" in by_offset[offsets[huge_quote]].detail  # the original reason stays

    # A re-run of the window meets both again: it completes and writes no second copy.
    rerun = index_window(
        env["cfg"], env["es"], start, end, topic=env["topic"], dlq_topic=dlq, index_prefix=env["prefix"],
        group_id=env["group"],
    )  # fmt: skip
    assert (rerun.indexed, rerun.dead_lettered) == (2, 2)
    assert len(dead_letters(env["bootstrap"], dlq)) == 2
    # Reconcile counts them as dead-lettered, not as holes; replay refuses to re-produce an excerpt.
    report = reconcile(env["cfg"], env["es"], topic=env["topic"], dlq_topic=dlq, index_prefix=env["prefix"],
                       group_id=env["group"])  # fmt: skip
    assert report["missing"] == 0 and report["partitions"][0]["dead_lettered"] == 2
    listed = list_dead_letters(env["cfg"], dlq, reason=TOO_LARGE)
    assert listed["by_reason"] == {TOO_LARGE: 2}
    assert {s["original_reason"] for s in listed["shown"]} == {"invalid_json", "mapping"}
    replayed = replay_dead_letters(env["cfg"], dlq, env["topic"])
    assert (replayed["replayed"], replayed["unreplayable"]) == (0, 2)


def test_a_dlq_topic_with_a_smaller_limit_gets_whole_letters_that_fit_and_excerpts_of_the_rest(env) -> None:
    dlq_limit = 100_000
    dlq = env["make_topic"](partitions=1, config={"max.message.bytes": str(dlq_limit)})
    assert _limit(env["admin"], dlq) == dlq_limit
    medium = [(KEY, b"[" + bytes([65 + i]) * 40_000) for i in range(3)]  # each fits; two together do not
    big_value = (KEY, b"<" + b"y" * 150_000)
    big_key = (b"K" * 200_000, b"not json")
    records = [*medium, big_value, big_key, quote_value(3)]

    delivered, summary, _, _ = _window(env, dlq, records)

    assert (summary.read, summary.indexed, summary.dead_lettered, summary.too_large) == (6, 1, 5, 2)
    letters = {letter.origin_offset: letter for letter in dead_letters(env["bootstrap"], dlq)}
    offsets = {(key, value): offset for _, offset, key, value in delivered}
    assert len(letters) == 5
    for key, value in medium:  # batched together by the writer, still each whole and as it was
        letter = letters[offsets[(key, value)]]
        assert (letter.reason, letter.key, letter.value, letter.truncated) == ("invalid_json", key, value, False)
    cut = letters[offsets[big_value]]
    assert (cut.reason, cut.original_size, cut.original_reason) == (TOO_LARGE, 150_001, "invalid_json")
    assert big_value[1].startswith(cut.value) and len(cut.value) < dlq_limit
    keyed = letters[offsets[big_key]]
    assert (keyed.reason, keyed.value, keyed.original_size) == (TOO_LARGE, b"not json", 8)
    assert keyed.key == big_key[0][:TOO_LARGE_KEY_BYTES] and "key of 200000 bytes" in keyed.detail


def test_the_writer_resends_smaller_when_the_broker_refuses_a_letter_as_too_large(env) -> None:
    dlq = env["make_topic"](partitions=1, config={"max.message.bytes": "100000"})
    # The writer believes the limit is 500 kB (as if the topic's config changed after it was read).
    writer = DeadLetterWriter(env["cfg"], dlq, max_message_bytes=500_000)
    origin = {"origin_topic": env["topic"], "origin_partition": 0, "reason": "invalid_json", "detail": "test"}
    writer.send(key=KEY, value=b"z" * 300_000, origin_offset=41, **origin)
    writer.send(key=KEY, value=b"small", origin_offset=42, **origin)
    writer.flush()

    letters = {letter.origin_offset: letter for letter in dead_letters(env["bootstrap"], dlq)}
    assert set(letters) == {41, 42}
    assert (letters[41].reason, letters[41].original_size, letters[41].original_reason) == (
        TOO_LARGE,
        300_000,
        "invalid_json",
    )
    assert (letters[42].reason, letters[42].value) == ("invalid_json", b"small")
    assert writer.too_large == 1


def test_record_batch_bytes_is_exact_for_the_broker(env) -> None:
    """The size formula the writer fits letters with agrees with the broker byte for byte."""
    small = env["make_topic"](partitions=1, config={**LOG_APPEND, "max.message.bytes": "20000"})
    headers = [SCHEMA_HEADER]
    size = _largest_value(20_000, KEY, headers)
    assert _refused_by_broker(env["bootstrap"], small, KEY, bytes(size)) is None
    refused = _refused_by_broker(env["bootstrap"], small, KEY, bytes(size + 1))
    assert refused is not None and refused.code() == KafkaError.MSG_SIZE_TOO_LARGE
