"""Maintenance against the real services: index retention on the local Elasticsearch, the DLQ age report on Kafka."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest

from quoteflow import jobs
from quoteflow.jobs import Pipeline
from quoteflow.maintenance import apply_retention, dlq_age_report, ilm_status, pipeline_series

DAY_MS = 86_400_000


@pytest.fixture
def prefixes(es_client) -> Iterator[tuple[str, str, str]]:
    """Unique quotes, bars and gaps prefixes; every index under them is deleted after the test."""
    tag = uuid.uuid4().hex[:10]
    names = (f"quotes-test-{tag}-", f"bars-test-{tag}-", f"gaps-test-{tag}-")
    yield names
    for prefix in names:
        es_client.options(ignore_status=404).indices.delete(index=f"{prefix}*", expand_wildcards="all")


def _month(d: date, back: int) -> str:
    index = d.year * 12 + d.month - 1 - back
    return f"{index // 12:04d}.{index % 12 + 1:02d}"


def _seed(es, prefixes: tuple[str, str, str], today: date) -> tuple[list[str], list[str], list[str]]:
    """Indices past 30 days' retention, current ones, and odd names; all created (one of them closed)."""
    q, b, g = prefixes
    day = lambda n: f"{q}{today - timedelta(days=n):%Y.%m.%d}"  # noqa: E731
    old = [day(45), day(31), f"{b}{_month(today, 3)}", f"{b}{_month(today, 2)}", f"{g}{_month(today, 4)}"]
    current = [day(30), day(1), day(0), f"{b}{_month(today, 0)}", f"{g}{_month(today, 0)}"]
    odd = [f"{q}{today:%Y.%m.%d}-restored", f"{b}2020.01.01", f"{g}archive"]
    for name in old + current + odd:
        es.indices.create(index=name, settings={"number_of_replicas": 0})
    es.indices.close(index=old[0])  # a closed index past retention goes too
    return sorted(old), sorted(current), sorted(odd)


def _present(es, prefixes: tuple[str, str, str]) -> set[str]:
    found = es.indices.get_settings(index=",".join(f"{p}*" for p in prefixes), expand_wildcards="open,closed")
    return set(dict(found))


def test_old_indices_are_deleted_current_and_odd_ones_kept_and_dry_run_deletes_nothing(es_client, prefixes) -> None:
    today = datetime.now(UTC).date()
    old, current, odd = _seed(es_client, prefixes, today)
    series = pipeline_series(*prefixes)

    dry = apply_retention(es_client, series, retention_days=30, dry_run=True, today=today)
    assert dry["path"] == "delete" and dry["ilm"]["available"] is False, dry
    assert dry["would_delete"] == old and dry["deleted"] == []
    assert dry["kept"] == current and dry["unrecognised"] == odd
    assert _present(es_client, prefixes) == set(old + current + odd)  # nothing deleted

    done = apply_retention(es_client, series, retention_days=30, today=today)
    assert done["path"] == "delete" and done["deleted"] == old, done
    assert _present(es_client, prefixes) == set(current + odd)

    again = apply_retention(es_client, series, retention_days=30, today=today)
    assert again["deleted"] == [] and again["past_retention"] == []


def test_the_minimal_cluster_has_no_ilm_and_says_so(es_client) -> None:
    available, detail = ilm_status(es_client)
    assert available is False
    assert "_ilm/status answered 400" in detail, detail


def test_the_retention_job_and_the_cli_act_on_the_pipelines_prefixes(es_client, es_url, prefixes, capsys) -> None:
    from quoteflow.cli import main

    today = datetime.now(UTC).date()
    old, current, odd = _seed(es_client, prefixes, today)
    flags = ["--index-prefix", prefixes[0], "--bars-index-prefix", prefixes[1], "--gaps-index-prefix", prefixes[2]]
    assert main(["maintenance", "indices", "--dry-run", *flags]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["command"] == "maintenance indices" and line["would_delete"] == old and line["path"] == "delete"
    assert _present(es_client, prefixes) == set(old + current + odd)

    p = Pipeline(
        kafka={},
        es_args={"hosts": [es_url]},
        index_prefix=prefixes[0],
        bars_index_prefix=prefixes[1],
        gaps_index_prefix=prefixes[2],
    )
    result = jobs.retention(p, retention_days=30, prefer_ilm=False)
    assert result["deleted"] == old and result["ilm"]["detail"] == "ILM not wanted (prefer_ilm off)"
    assert _present(es_client, prefixes) == set(current + odd)


def _letter(reason: str, origin: str, offset: int, ts_ms: int) -> dict:
    return {
        "key": b"BINANCE:SOLUSDT",
        "value": b'{"not": "a quote"}',
        "timestamp": ts_ms,
        "headers": [
            ("origin.topic", origin.encode()),
            ("origin.partition", b"0"),
            ("origin.offset", str(offset).encode()),
            ("error.reason", reason.encode()),
            ("error.detail", b"planted"),
        ],
    }


def test_dlq_age_report_gives_counts_and_ages_per_reason(kafka_bootstrap, make_topic) -> None:
    from confluent_kafka import Producer

    dlq = make_topic(partitions=2, config={"retention.ms": str(30 * DAY_MS)})
    now = int(time.time() * 1000)
    letters = [
        _letter("schema", "quotes.tradingview", 1, now - 10 * DAY_MS),
        _letter("schema", "quotes.tradingview", 2, now - 2 * DAY_MS),
        _letter("schema", "bars.tradingview", 3, now - 5 * DAY_MS),
        _letter("invalid_json", "quotes.tradingview", 4, now - DAY_MS // 2),
    ]
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for i, letter in enumerate(letters):
        producer.produce(dlq, partition=i % 2, **letter)
    assert producer.flush(30) == 0
    config = {"bootstrap.servers": kafka_bootstrap}

    report = dlq_age_report(config, dlq, now_ms=now)
    assert report["dead_letters"] == 4 and report["retention_days"] == 30.0
    assert report["oldest_age_days"] == 10.0
    schema = report["by_reason"]["schema"]
    assert (schema["count"], schema["oldest_age_days"], schema["newest_age_days"]) == (3, 10.0, 2.0)
    assert schema["oldest"] == datetime.fromtimestamp((now - 10 * DAY_MS) / 1000, UTC).isoformat(
        timespec="milliseconds"
    ).replace("+00:00", "Z")
    bad_json = report["by_reason"]["invalid_json"]
    assert (bad_json["count"], bad_json["oldest_age_days"], bad_json["newest_age_days"]) == (1, 0.5, 0.5)
    assert report["by_origin"] == {"bars.tradingview": 1, "quotes.tradingview": 3}

    empty = jobs.dlq_ages(Pipeline(kafka=config, dlq_topic=make_topic(partitions=1)))
    assert empty["dead_letters"] == 0 and empty["by_reason"] == {} and empty["oldest_age_days"] is None
