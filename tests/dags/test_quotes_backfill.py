"""quotes_backfill and quotes_reconcile through dag.test(): exact re-indexing of ranges and repaired holes."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from quoteflow.elastic.template import ensure_template, ensure_templates
from quoteflow.indexer import index_window
from tests.helpers.dags import load_dag, returns, task_states
from tests.helpers.indexing import (
    LOG_APPEND,
    bar_record,
    committed,
    delete_ids,
    es_sources,
    expected_docs,
    produce,
    quote_value,
)


def test_backfill_and_reconcile_restore_deleted_documents(
    kafka_bootstrap, es_client, make_topic, fresh_index_prefix
) -> None:
    ensure_template(es_client)
    topic, dlq = make_topic(partitions=2, config=LOG_APPEND), make_topic(partitions=1)
    group = f"g-{topic}"
    cfg = {"bootstrap.servers": kafka_bootstrap}
    start = datetime.now(UTC)
    time.sleep(0.05)
    delivered = produce(kafka_bootstrap, topic, [quote_value(i) for i in range(600)])
    time.sleep(0.05)
    index_window(cfg, es_client, start, datetime.now(UTC), topic=topic, dlq_topic=dlq,
                 index_prefix=fresh_index_prefix, group_id=group)  # fmt: skip
    full = es_sources(es_client, fresh_index_prefix)
    assert full and {i: (d["symbol"], d["price"]) for i, d in full.items()} == expected_docs(topic, delivered)
    before = committed(kafka_bootstrap, topic, group, 2)
    bars = make_topic(partitions=1, config=LOG_APPEND)
    bars_prefix = f"bars-test-{fresh_index_prefix.removeprefix('quotes-test-')}"
    conf = {
        "topic": topic,
        "dlq_topic": dlq,
        "index_prefix": fresh_index_prefix,
        "group_id": group,
        "bars_topic": bars,
        "bars_index_prefix": bars_prefix,
        "gaps_topic": "",  # no gaps stream in this run
    }

    assert delete_ids(es_client, fresh_index_prefix, [f"{topic}-0-{o}" for o in range(10, 60)]) == 50
    backfill = load_dag("quotes_backfill")
    run = backfill.test(run_conf={**conf, "partitions": [0], "mode": "offsets", "start": "10", "end": "60"})
    assert str(run.state) == "success", task_states(run)
    result = returns(run)["run_backfill"][0]
    assert (result["read"], result["indexed"], result["committed"]) == (50, 50, {})
    assert es_sources(es_client, fresh_index_prefix) == full
    assert committed(kafka_bootstrap, topic, group, 2) == before  # live bookkeeping untouched

    refused = backfill.test(run_conf={**conf, "partitions": [1], "mode": "offsets", "start": "0", "end": "999999"})
    assert str(refused.state) == "failed" and task_states(refused)["run_backfill"] == "failed"

    assert delete_ids(es_client, fresh_index_prefix, [f"{topic}-1-{o}" for o in (0, 5, 6, 7, 100)]) == 5
    reconcile = load_dag("quotes_reconcile")
    report = reconcile.test(run_conf={**conf, "repair": False})  # holes found and left: the CLI's verdict too
    assert str(report.state) == "failed" and task_states(report)["reconcile"] == "failed"
    run = reconcile.test(run_conf={**conf, "repair": True})
    assert str(run.state) == "success", task_states(run)
    result = returns(run)["reconcile"][0]
    assert result["holes"] == [
        {"topic": topic, "partition": 1, "start": 0, "end": 1},
        {"topic": topic, "partition": 1, "start": 5, "end": 8},
        {"topic": topic, "partition": 1, "start": 100, "end": 101},
    ]
    assert (result["missing"], result["repaired"], result["missing_after_repair"]) == (5, 5, 0)
    assert es_sources(es_client, fresh_index_prefix) == full
    assert set(result["streams"]) == {"quotes", "bars"} and result["streams"]["bars"]["missing"] == 0

    # The bars stream: a backfill of its topic indexes one document per bar, the newest record winning.
    ensure_templates(es_client)
    produce(kafka_bootstrap, bars, [bar_record("BINANCE:SOLUSDT", "2026-12-02T02:41:00Z", c) for c in (1.0, 2.0, 3.0)])
    try:
        bars_conf = {**conf, "stream": "bars", "partitions": [0], "mode": "offsets", "start": "0", "end": "3"}
        run = backfill.test(run_conf=bars_conf)
        assert str(run.state) == "success", task_states(run)
        result = returns(run)["run_backfill"][0]
        assert (result["stream"], result["read"], result["indexed"], result["stale"]) == ("bars", 3, 3, 0)
        docs = es_sources(es_client, bars_prefix)
        assert [d["close"] for d in docs.values()] == [3.0]
    finally:
        es_client.options(ignore_status=404).indices.delete(index=f"{bars_prefix}*", expand_wildcards="all")


@pytest.mark.parametrize("dag_id", ["quotes_setup", "quotes_indexer", "quotes_backfill", "quotes_reconcile"])
def test_params_are_typed_titled_and_described(dag_id: str) -> None:
    dag = load_dag(dag_id)
    assert dag.params, f"{dag_id} has no params"
    for name in dag.params:
        param = dag.params.get_param(name)
        assert param.schema.get("type") and param.schema.get("title"), f"{dag_id}.{name}: {param.schema}"
        assert param.description, f"{dag_id}.{name} has no description"


def test_schedules_are_as_designed() -> None:
    assert load_dag("quotes_backfill").timetable.__class__.__name__ == "NullTimetable"
    assert load_dag("quotes_setup").timetable.__class__.__name__ == "NullTimetable"
    reconcile = load_dag("quotes_reconcile")
    assert reconcile.catchup is False and reconcile.schedule == "@hourly"
