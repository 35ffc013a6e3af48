"""Backfill, reconcile, DLQ tools and setup through the library and the stable CLI, on real Kafka and ES."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from quoteflow.backfill import backfill
from quoteflow.elastic.template import ensure_template
from quoteflow.indexer import index_window
from quoteflow.kafka.reader import RangeUnavailable
from quoteflow.reconcile import find_holes
from quoteflow.streams import Names
from tests.helpers.indexing import (
    LOG_APPEND,
    committed,
    dead_letters,
    delete_ids,
    es_count,
    es_sources,
    poison_values,
    produce,
    quote_value,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def loaded(kafka_bootstrap, es_client, es_url, make_topic, fresh_index_prefix):
    """A 2-partition topic with 1000 quotes and 2 poison records, indexed by one window."""
    ensure_template(es_client)
    topic, dlq = make_topic(partitions=2, config=LOG_APPEND), make_topic(partitions=1)
    env = {
        "cfg": {"bootstrap.servers": kafka_bootstrap},
        "es": es_client,
        "es_url": es_url,
        "topic": topic,
        "dlq": dlq,
        "prefix": fresh_index_prefix,
        "group": f"g-{topic}",
        "bootstrap": kafka_bootstrap,
        "start": datetime.now(UTC),
    }
    time.sleep(0.05)
    records = [quote_value(i) for i in range(1000)]
    records[500:500] = [(b"BINANCE:SOLUSDT", v) for _, v in poison_values()[:2]]
    env["delivered"] = produce(kafka_bootstrap, topic, records)
    time.sleep(0.05)
    env["end"] = datetime.now(UTC)
    summary = index_window(env["cfg"], es_client, env["start"], env["end"], **_kw(env))
    assert (summary.indexed, summary.dead_lettered) == (1000, 2)
    env["docs"] = es_sources(es_client, fresh_index_prefix)
    return env


def _kw(env, **changes: str) -> dict:
    """The names of the test's quotes stream, as the one value the indexer, backfill and reconcile take."""
    names = {"topic": env["topic"], "index_prefix": env["prefix"], "dlq_topic": env["dlq"], "group_id": env["group"]}
    return {"names": Names.quotes_only(**{**names, **changes})}


def _cli(env, *args: str) -> subprocess.CompletedProcess:
    host = env["es_url"].split("//")[1]
    environ = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AIRFLOW_CONN_KAFKA_DEFAULT": json.dumps({"conn_type": "kafka", "extra": env["cfg"]}),
        "AIRFLOW_CONN_ELASTICSEARCH_DEFAULT": json.dumps(
            {"conn_type": "elasticsearch", "host": host.split(":")[0], "port": int(host.split(":")[1])}
        ),
    }
    environ.pop("AIRFLOW_CONN_KIBANA_DEFAULT", None)
    common = [
        "--topic",
        env["topic"],
        "--dlq-topic",
        env["dlq"],
        "--index-prefix",
        env["prefix"],
        "--group",
        env["group"],
    ]
    return subprocess.run(
        [sys.executable, "-m", "quoteflow", *args, *common],
        env=environ,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def _summary(proc: subprocess.CompletedProcess) -> dict:
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line, got {proc.stdout!r} / {proc.stderr[-500:]}"
    return json.loads(lines[0])


def test_time_backfill_after_deleting_documents_is_exact_and_commits_nothing(loaded) -> None:
    es, prefix, topic = loaded["es"], loaded["prefix"], loaded["topic"]
    before = committed(loaded["bootstrap"], topic, loaded["group"], 2)
    assert delete_ids(es, prefix, list(loaded["docs"])[::3]) > 300
    result = backfill(loaded["cfg"], es, mode="time", start=loaded["start"], end=loaded["end"], **_kw(loaded))
    assert (result["read"], result["indexed"], result["dead_lettered"]) == (1002, 1000, 2)
    assert es_sources(es, prefix) == loaded["docs"]
    assert committed(loaded["bootstrap"], topic, loaded["group"], 2) == before
    dry = backfill(loaded["cfg"], None, mode="offsets", start=0, end=10, partitions=[0], dry_run=True, **_kw(loaded))
    assert dry == {
        "dry_run": True,
        "stream": "quotes",
        "records": 10,
        "ranges": [{"topic": topic, "partition": 0, "start": 0, "end": 10}],
    }


def test_backfill_outside_retention_is_refused_with_the_available_range(loaded) -> None:
    high = max(o for p, o, _, _ in loaded["delivered"] if p == 0) + 1
    with pytest.raises(RangeUnavailable, match=rf"Kafka holds \[0, {high}\)"):
        backfill(loaded["cfg"], loaded["es"], mode="offsets", start=0, end=high + 5, partitions=[0], **_kw(loaded))
    proc = _cli(loaded, "backfill", "--partition", "0", "--from-offset", "5", "--to-offset", str(high + 1))
    assert proc.returncode == 2 and f"Kafka holds [0, {high})" in proc.stderr


def test_reconcile_cli_lists_holes_then_repairs_them(loaded) -> None:
    es, prefix, topic = loaded["es"], loaded["prefix"], loaded["topic"]
    clean = _cli(loaded, "reconcile")
    assert clean.returncode == 0 and _summary(clean)["missing"] == 0
    p0 = sorted(o for p, o, k, _ in loaded["delivered"] if p == 0)
    gone = [p0[3], p0[4], p0[200]]
    assert delete_ids(es, prefix, [f"{topic}-0-{o}" for o in gone] + [f"{topic}-1-0"]) == 4

    found = _cli(loaded, "reconcile")
    assert found.returncode == 1
    report = _summary(found)
    assert report["missing"] == 4
    assert [(h["partition"], h["start"], h["end"]) for h in report["holes"]] == [
        (0, p0[3], p0[4] + 1),
        (0, p0[200], p0[200] + 1),
        (1, 0, 1),
    ]
    dead = sum(part["dead_lettered"] for part in report["partitions"])
    assert dead == 2  # dead-lettered offsets are accounted for, not reported as holes

    repaired = _cli(loaded, "reconcile", "--repair")
    assert repaired.returncode == 0, repaired.stderr[-800:]
    assert (_summary(repaired)["repaired"], _summary(repaired)["missing_after_repair"]) == (4, 0)
    assert es_sources(es, prefix) == loaded["docs"]


def test_hole_search_refines_coarse_buckets_with_aggregations(loaded) -> None:
    es, prefix, topic = loaded["es"], loaded["prefix"], loaded["topic"]
    p1 = sorted(o for p, o, _, _ in loaded["delivered"] if p == 1)
    assert len(p1) > 100
    gone = [p1[1], p1[2], p1[57], p1[-1]]
    delete_ids(es, prefix, [f"{topic}-1-{o}" for o in gone])
    es.indices.refresh(index=f"{prefix}*")
    dead = sorted(set(p1) - {int(i.rsplit("-", 1)[1]) for i in loaded["docs"] if i.startswith(f"{topic}-1-")})
    assert len(dead) == 2  # the two poison records were produced to this partition
    holes, indexed = find_holes(es, f"{prefix}*", topic, 1, 0, p1[-1] + 1, dead, max_buckets=7)
    assert holes == [[p1[1], p1[2] + 1], [p1[57], p1[57] + 1], [p1[-1], p1[-1] + 1]]
    assert indexed == len(p1) - 4 - 2
    without_dlq, _ = find_holes(es, f"{prefix}*", topic, 1, 0, p1[-1] + 1, max_buckets=7)
    assert [dead[0], dead[1] + 1] in without_dlq  # not knowing the DLQ, they would look like a hole


def test_dlq_cli_lists_and_replays_each_dead_letter_once(loaded) -> None:
    # A re-run meets the same bad records again: they are not dead-lettered twice.
    rerun = index_window(loaded["cfg"], loaded["es"], loaded["start"], loaded["end"], **_kw(loaded))
    assert rerun.dead_lettered == 2
    assert len(dead_letters(loaded["bootstrap"], loaded["dlq"])) == 2
    listed = _cli(loaded, "dlq", "list")
    assert listed.returncode == 0
    summary = _summary(listed)
    assert summary["dead_letters"] == 2 and summary["by_reason"] == {"invalid_json": 1, "schema": 1}
    assert {s["origin"].rsplit("-", 2)[0] for s in summary["shown"]} == {loaded["topic"]}
    replayed = _summary(_cli(loaded, "dlq", "replay"))
    assert (replayed["replayed"], replayed["skipped"]) == (2, 0)
    assert _summary(_cli(loaded, "dlq", "replay"))["replayed"] == 0  # already replayed: nothing twice


def test_index_cli_prints_one_json_line_and_rejects_bad_input(loaded) -> None:
    start = (loaded["end"] + timedelta(seconds=1)).isoformat()
    proc = _cli(loaded, "index", "--start", loaded["start"].isoformat(), "--end", loaded["end"].isoformat())
    assert proc.returncode == 0 and _summary(proc)["indexed"] == 1000
    bad = _cli(loaded, "index", "--start", "yesterday", "--end", start)
    assert bad.returncode == 2 and "ISO-8601" in bad.stderr
    assert es_count(loaded["es"], loaded["prefix"]) == 1000


def test_setup_cli_twice_second_run_changes_nothing(kafka_bootstrap, kafka_admin, es_url) -> None:
    topic = f"test.clisetup.{uuid.uuid4().hex[:8]}"
    env = {"cfg": {"bootstrap.servers": kafka_bootstrap}, "es_url": es_url, "topic": topic,
           "dlq": f"{topic}.dlq", "prefix": "quotes-unused-", "group": "g"}  # fmt: skip
    try:
        first = _cli(env, "setup", "--partitions", "2")
        assert first.returncode == 0, first.stderr[-800:]
        assert _summary(first)["changed"] is True and _summary(first)["kibana"] == {"skipped": True, "changed": False}
        second = _cli(env, "setup", "--partitions", "2")
        assert _summary(second)["changed"] is False and _summary(second)["template"] == "unchanged"
        assert "nothing changed" in second.stderr
    finally:
        kafka_admin.delete_topics([topic, f"{topic}.dlq"], operation_timeout=30)


def test_cli_failure_still_prints_one_json_line_and_exits_1(loaded) -> None:
    unreachable = {**loaded, "es_url": "http://127.0.0.1:9"}  # nothing listens on port 9
    proc = _cli(unreachable, "index", "--start", loaded["start"].isoformat(), "--end", loaded["end"].isoformat(),
                "--retry-budget", "1", "--no-commit")  # fmt: skip
    assert proc.returncode == 1
    summary = _summary(proc)
    assert summary["ok"] is False and summary["error"] == "ElasticsearchUnavailable"
    assert "retry budget" in summary["detail"]


def test_records_lost_to_retention_are_refused_by_backfill_and_flagged_by_windows(loaded, kafka_admin, caplog) -> None:
    from confluent_kafka import TopicPartition

    from quoteflow.indexer import plan_window

    topic = loaded["topic"]
    # Delete the head of partition 0 the way retention does: the low watermark moves up.
    kafka_admin.delete_records([TopicPartition(topic, 0, 100)])[TopicPartition(topic, 0, 100)].result(timeout=30)
    with pytest.raises(RangeUnavailable, match=r"Kafka holds \[100, "):
        backfill(loaded["cfg"], loaded["es"], mode="offsets", start=50, end=150, partitions=[0], **_kw(loaded))
    before = loaded["start"] - timedelta(seconds=5)
    with pytest.raises(RangeUnavailable, match="no longer retains records from"):
        backfill(
            loaded["cfg"], loaded["es"], mode="time", start=before, end=loaded["end"], partitions=[0], **_kw(loaded)
        )
    ok = backfill(loaded["cfg"], loaded["es"], mode="offsets", start=100, end=150, partitions=[0], **_kw(loaded))
    assert ok["read"] == 50
    with caplog.at_level("WARNING", logger="quoteflow.kafka.reader"):
        groups = plan_window(loaded["cfg"], before, loaded["end"], topic=topic)
    assert [r["start"] for g in groups for r in g if r["partition"] == 0] == [100]
    assert "deleted by retention" in caplog.text and f"{topic}[0]" in caplog.text
    assert f"{topic}[1]" not in caplog.text


def test_reconcile_until_high_finds_and_repairs_records_after_the_last_committed_window(loaded) -> None:
    es, prefix, topic = loaded["es"], loaded["prefix"], loaded["topic"]
    ends = committed(loaded["bootstrap"], topic, loaded["group"], 2)
    later = produce(loaded["bootstrap"], topic, [quote_value(2000 + i) for i in range(30)])  # no window ran yet
    highs = {p: max([o for q, o, _, _ in loaded["delivered"] + later if q == p]) + 1 for p in (0, 1)}
    assert all(highs[p] > ends[p] for p in (0, 1))

    up_to_committed = _cli(loaded, "reconcile")
    assert up_to_committed.returncode == 0 and _summary(up_to_committed)["missing"] == 0
    found = _cli(loaded, "reconcile", "--until", "high")
    assert found.returncode == 1
    report = _summary(found)
    assert report["missing"] == 30
    assert [(h["partition"], h["start"], h["end"]) for h in report["holes"]] == [(p, ends[p], highs[p]) for p in (0, 1)]

    repaired = _cli(loaded, "reconcile", "--until", "high", "--repair")
    assert repaired.returncode == 0, repaired.stderr[-800:]
    assert (_summary(repaired)["repaired"], _summary(repaired)["missing_after_repair"]) == (30, 0)
    docs = es_sources(es, prefix)
    assert len(docs) == 1030
    for partition, offset, _key, value in later:
        assert docs[f"{topic}-{partition}-{offset}"]["price"] == orjson.loads(value)["price"]
    # The repair went through the backfill group: the live group's offsets did not move.
    assert committed(loaded["bootstrap"], topic, loaded["group"], 2) == ends


def test_dlq_list_and_replay_by_reason_replay_only_that_reason_and_index_it_once(
    kafka_bootstrap, es_client, es_url, make_topic, fresh_index_prefix
) -> None:
    from quoteflow.elastic.template import index_template, quote_mappings
    from quoteflow.kafka.clients import make_consumer
    from quoteflow.kafka.reader import PartitionRange, read_ranges, watermarks

    ensure_template(es_client)
    # A broken mapping for this test's indices only (currency as a number): every quote is refused as `mapping`.
    broken = f"test-broken-{uuid.uuid4().hex[:8]}"
    body = index_template([f"{fresh_index_prefix}*"])
    body["template"]["mappings"] = quote_mappings()
    body["template"]["mappings"]["properties"]["currency"] = {"type": "long"}
    es_client.indices.put_index_template(name=broken, **{**body, "priority": 500})
    topic, dlq = make_topic(partitions=1, config=LOG_APPEND), make_topic(partitions=1)
    env = {"cfg": {"bootstrap.servers": kafka_bootstrap}, "es_url": es_url, "topic": topic, "dlq": dlq,
           "prefix": fresh_index_prefix, "group": f"g-{topic}"}  # fmt: skip
    try:
        start = datetime.now(UTC)
        time.sleep(0.05)
        quotes = [quote_value(i) for i in range(6)]
        poison = [(b"BINANCE:SOLUSDT", v) for _, v in poison_values()[:2]]  # invalid_json, schema
        first = produce(kafka_bootstrap, topic, quotes + poison)
        time.sleep(0.05)
        summary = index_window(env["cfg"], es_client, start, datetime.now(UTC), **_kw(env))
        assert summary.dead_letter_reasons == {"mapping": 6, "invalid_json": 1, "schema": 1}

        listed = _summary(_cli(env, "dlq", "list", "--reason", "mapping"))
        assert (listed["dead_letters"], listed["by_reason"]) == (6, {"mapping": 6})
        assert {s["reason"] for s in listed["shown"]} == {"mapping"}
        schema_only = _summary(_cli(env, "dlq", "list", "--reason", "schema"))
        assert (schema_only["dead_letters"], schema_only["by_reason"]) == (1, {"schema": 1})
    finally:
        es_client.indices.delete_index_template(name=broken)  # the cause is fixed
    es_client.options(ignore_status=404).indices.delete(index=f"{fresh_index_prefix}*")  # empty, wrong mapping

    before = first[-1][1] + 1
    start = datetime.now(UTC)
    time.sleep(0.05)
    replayed = _summary(_cli(env, "dlq", "replay", "--reason", "mapping"))
    assert (replayed["replayed"], replayed["skipped"]) == (6, 2)
    time.sleep(0.05)
    end = datetime.now(UTC)

    # Read the replayed records back from the quotes topic: exactly the six quotes, each once, unchanged.
    consumer = make_consumer(env["cfg"], "test-replay-reader")
    try:
        high = watermarks(consumer, topic, 0)[1]
        back = [m for batch in read_ranges(consumer, [PartitionRange(topic, 0, before, high)]) for m in batch]
    finally:
        consumer.close()
    origin_of = {value: f"{topic}-0-{offset}" for _, offset, _, value in first}
    assert sorted(m.value() for m in back) == sorted(v for _, v in quotes)
    assert all(dict(m.headers())["replay.origin"].decode() == origin_of[m.value()] for m in back)

    for _ in range(2):  # the window that holds them, run twice: each replayed quote is indexed exactly once
        again = index_window(env["cfg"], es_client, start, end, **_kw(env))
        assert (again.read, again.indexed, again.dead_lettered) == (6, 6, 0)
    docs = es_sources(es_client, fresh_index_prefix)
    assert set(docs) == {f"{topic}-0-{m.offset()}" for m in back}
    assert sorted(d["price"] for d in docs.values()) == sorted(orjson.loads(v)["price"] for _, v in quotes)

    assert _summary(_cli(env, "dlq", "replay", "--reason", "mapping"))["replayed"] == 0  # nothing twice
    # Replaying one reason left the others pending: the schema letter is still there to replay, then done.
    assert _summary(_cli(env, "dlq", "replay", "--reason", "schema"))["replayed"] == 1
    rest = _summary(_cli(env, "dlq", "replay"))
    assert rest["replayed"] == 1  # only invalid_json was never replayed
    assert _summary(_cli(env, "dlq", "replay"))["replayed"] == 0


def test_setup_repairs_planted_topic_config_drift_and_then_changes_nothing(
    kafka_bootstrap, kafka_admin, es_url
) -> None:
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    from quoteflow.kafka.admin import describe_topic_config

    topic = f"test.drift.{uuid.uuid4().hex[:8]}"
    dlq = f"{topic}.dlq"
    env = {"cfg": {"bootstrap.servers": kafka_bootstrap}, "es_url": es_url, "topic": topic, "dlq": dlq,
           "prefix": "quotes-unused-", "group": "g"}  # fmt: skip
    args = ("setup", "--partitions", "2", "--retention-hours", "5", "--dlq-retention-days", "2")
    try:
        assert _summary(_cli(env, *args))["topics"][dlq]["created"] is True
        wanted = {name: describe_topic_config(kafka_admin, name) for name in (topic, dlq)}
        assert wanted[dlq]["retention.ms"] == str(2 * 24 * 3600 * 1000)
        drift = {
            dlq: {"retention.ms": "60000", "cleanup.policy": "compact"},
            topic: {"message.timestamp.type": "CreateTime", "retention.ms": "1000"},
        }
        for name, entries in drift.items():
            resource = ConfigResource("topic", name, incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in entries.items()
            ])  # fmt: skip
            kafka_admin.incremental_alter_configs([resource])[resource].result(timeout=30)
        assert describe_topic_config(kafka_admin, dlq)["retention.ms"] == "60000"

        repaired = _cli(env, *args)
        assert repaired.returncode == 0, repaired.stderr[-800:]
        report = _summary(repaired)
        assert report["changed"] is True
        assert report["topics"][dlq]["changes"] == [
            "cleanup.policy: 'compact' -> 'delete'",
            f"retention.ms: '60000' -> '{2 * 24 * 3600 * 1000}'",
        ]
        assert report["topics"][topic]["changes"] == [
            "message.timestamp.type: 'CreateTime' -> 'LogAppendTime'",
            f"retention.ms: '1000' -> '{5 * 3600 * 1000}'",
        ]
        for name in (topic, dlq):
            now = describe_topic_config(kafka_admin, name)
            assert {k: now[k] for k in drift[name]} == {k: wanted[name][k] for k in drift[name]}
        again = _summary(_cli(env, *args))
        assert again["changed"] is False and all(not t["changes"] for t in again["topics"].values())
    finally:
        kafka_admin.delete_topics([topic, dlq], operation_timeout=30)


def test_setup_puts_back_a_drifted_index_template_and_then_changes_nothing(es_client, fresh_index_prefix) -> None:
    from quoteflow.elastic.template import index_template

    name = f"test-drift-{uuid.uuid4().hex[:8]}"
    wanted = {**index_template([f"{fresh_index_prefix}*"]), "priority": 300}  # above "quotes" for these indices
    try:
        assert ensure_template(es_client, name, wanted) == "created"
        plants = [
            lambda b: b["template"]["mappings"]["properties"].update(price={"type": "keyword"}),
            lambda b: b["template"]["settings"].update(refresh_interval="30s"),
            lambda b: b["template"]["settings"].update({"mapping.total_fields.limit": 40}),  # a setting not managed
            lambda b: b.update(version=7),
        ]
        for plant in plants:
            drifted = json.loads(json.dumps(wanted))
            plant(drifted)
            es_client.indices.put_index_template(name=name, **drifted)
            assert ensure_template(es_client, name, wanted) == "updated", drifted
            assert ensure_template(es_client, name, wanted) == "unchanged"
        # What was put back works: a new index under the prefix gets the contract's mapping and settings.
        index = f"{fresh_index_prefix}2026.11.28"
        es_client.indices.create(index=index)
        mapping = es_client.indices.get_mapping(index=index)[index]["mappings"]
        settings = es_client.indices.get_settings(index=index)[index]["settings"]["index"]
        assert mapping["dynamic"] == "strict" and mapping["properties"]["price"] == {"type": "double"}
        assert settings["refresh_interval"] == "1s" and "mapping" not in settings
    finally:
        es_client.options(ignore_status=404).indices.delete_index_template(name=name)
