"""quotes_indexer through dag.test(): tiled 30 s windows index exactly once, re-runs change nothing."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from quoteflow.elastic.template import ensure_template
from tests.helpers.dags import load_dag, returns, task_states
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
    wait_past,
)


@pytest.fixture(scope="module")
def dag():
    return load_dag("quotes_indexer")


def test_dag_shape(dag) -> None:
    assert dag.catchup is True and dag.max_active_runs == 1
    assert dag.timetable.__class__.__name__ == "DeltaDataIntervalTimetable"
    assert [t.task_id for t in dag.topological_sort()] == ["plan", "index_group", "finish"]
    assert dag.params["partition_groups"] == 2


def test_consecutive_windows_index_each_record_once_and_reruns_change_nothing(
    dag, kafka_bootstrap, es_client, make_topic, fresh_index_prefix
) -> None:
    ensure_template(es_client)
    topic, dlq = make_topic(partitions=3, config=LOG_APPEND), make_topic(partitions=1)
    group = f"g-{topic}"
    conf = {"topic": topic, "dlq_topic": dlq, "index_prefix": fresh_index_prefix, "group_id": group}
    delivered = produce(kafka_bootstrap, topic, [quote_value(i) for i in range(500)])
    time.sleep(0.1)
    boundary = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)  # end of window 1
    wait_past(boundary.timestamp())
    poison = [(b"bad", v) for _, v in poison_values()]
    delivered += produce(kafka_bootstrap, topic, [quote_value(1000 + i) for i in range(300)] + poison)

    first = dag.test(logical_date=boundary, run_conf={**conf, "partition_groups": 2})
    assert str(first.state) == "success", task_states(first)
    got = returns(first)
    assert len(got["index_group"]) == 2  # one mapped task per partition group
    assert got["finish"][0]["read"] == got["finish"][0]["indexed"] == 500
    wait_past((boundary + timedelta(seconds=30)).timestamp() + 0.5)
    second = dag.test(logical_date=boundary + timedelta(seconds=30), run_conf={**conf, "partition_groups": 3})
    assert str(second.state) == "success", task_states(second)
    window2 = returns(second)["finish"][0]
    assert (window2["read"], window2["indexed"], window2["dead_lettered"]) == (304, 300, 4)
    assert len(returns(second)["index_group"]) == 3

    docs = es_sources(es_client, fresh_index_prefix)
    want = expected_docs(topic, delivered)
    assert len(docs) == 800 and {i: (d["symbol"], d["price"]) for i, d in docs.items()} == want
    assert {d.origin_offset for d in dead_letters(kafka_bootstrap, dlq)} == {
        o for _, o, k, _ in delivered if k == b"bad"
    }
    ends: dict[int, int] = {}
    for p, o, _, _ in delivered:
        ends[p] = max(ends.get(p, 0), o + 1)
    assert committed(kafka_bootstrap, topic, group, 3) == ends

    # Airflow re-running (or backfilling) both windows rewrites the same documents: nothing changes.
    for logical_date in (boundary, boundary + timedelta(seconds=30)):
        rerun = dag.test(logical_date=logical_date, run_conf=conf)
        assert str(rerun.state) == "success", task_states(rerun)
    assert es_sources(es_client, fresh_index_prefix) == docs
    assert committed(kafka_bootstrap, topic, group, 3) == ends
    assert len(dead_letters(kafka_bootstrap, dlq)) == 4  # re-runs do not dead-letter twice either


def test_createtime_topic_fails_the_run_without_retrying(
    dag, kafka_bootstrap, es_client, make_topic, fresh_index_prefix
):
    topic = make_topic(partitions=1, config={"message.timestamp.type": "CreateTime"})
    produce(kafka_bootstrap, topic, [quote_value(1)])
    time.sleep(0.2)
    run = dag.test(
        logical_date=datetime.now(UTC) - timedelta(seconds=1),
        run_conf={"topic": topic, "index_prefix": fresh_index_prefix, "group_id": f"g-{topic}"},
    )
    assert str(run.state) == "failed"
    states = task_states(run)
    assert states["plan"] == "failed" and states.get("finish") in ("upstream_failed", None)
    assert es_count(es_client, fresh_index_prefix) == 0
