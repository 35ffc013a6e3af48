"""quotes_indexer through dag.test(): its window and layout settings, tiled windows indexed exactly once, re-runs.

The window (``QUOTEFLOW_WINDOW_SECONDS``) and the layout (``QUOTEFLOW_PARTITION_GROUPS``: 1 = one
``index_window`` task per run, more = plan → mapped index_group → finish) are read when the file is
parsed, so each layout is its own parse of dags/quotes_indexer.py with the variable set.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest

from quoteflow.elastic.template import ensure_template
from tests.helpers.dags import DAGS, load_dag, returns, task_states
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

SETTINGS = ("QUOTEFLOW_WINDOW_SECONDS", "QUOTEFLOW_PARTITION_GROUPS")


@contextmanager
def _settings(**env: str) -> Iterator[None]:
    """Exactly these settings in the environment (the others unset) while the DAG file is parsed."""
    with pytest.MonkeyPatch.context() as mp:
        for name in SETTINGS:
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        yield


def _parse(**env: str):
    with _settings(**env):
        return load_dag("quotes_indexer")


def _import_errors(**env: str) -> dict[str, str]:
    from airflow.dag_processing.dagbag import DagBag

    with _settings(**env):
        return DagBag(dag_folder=str(DAGS / "quotes_indexer.py")).import_errors


@pytest.fixture(scope="module")
def dag():
    """One task per window (the default layout), 30 s windows: the windows these tests tile."""
    return _parse(QUOTEFLOW_WINDOW_SECONDS="30")


@pytest.fixture(scope="module")
def mapped_dag():
    return _parse(QUOTEFLOW_WINDOW_SECONDS="30", QUOTEFLOW_PARTITION_GROUPS="2")


def test_default_shape_is_one_task_per_10_s_window() -> None:
    default = _parse()
    assert default.catchup is True and default.max_active_runs == 1
    assert default.timetable.__class__.__name__ == "DeltaDataIntervalTimetable"
    assert default.timetable.delta == timedelta(seconds=10)
    assert [t.task_id for t in default.topological_sort()] == ["index_window"]
    assert default.params["partition_groups"] == 1


def test_mapped_shape_when_several_partition_groups(mapped_dag) -> None:
    assert [t.task_id for t in mapped_dag.topological_sort()] == ["plan", "index_group", "finish"]
    assert mapped_dag.params["partition_groups"] == 2
    assert mapped_dag.timetable.delta == timedelta(seconds=30)


@pytest.mark.parametrize("seconds", ["10", "5", "3600", " 15 "])
def test_the_window_is_the_timetables_delta(seconds: str) -> None:
    assert _parse(QUOTEFLOW_WINDOW_SECONDS=seconds).timetable.delta == timedelta(seconds=int(seconds))


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("QUOTEFLOW_WINDOW_SECONDS", "ten"),
        ("QUOTEFLOW_WINDOW_SECONDS", "0"),
        ("QUOTEFLOW_WINDOW_SECONDS", "4"),
        ("QUOTEFLOW_WINDOW_SECONDS", "2.5"),
        ("QUOTEFLOW_WINDOW_SECONDS", "86400"),
        ("QUOTEFLOW_PARTITION_GROUPS", "0"),
        ("QUOTEFLOW_PARTITION_GROUPS", "many"),
    ],
)
def test_a_bad_setting_is_refused_naming_the_variable(variable: str, value: str) -> None:
    errors = _import_errors(**{variable: value})
    (message,) = errors.values()
    assert f"{variable}={value!r}" in message and "whole number" in message, message


def test_one_task_plans_indexes_and_finishes_a_window(
    dag, kafka_bootstrap, es_client, make_topic, fresh_index_prefix
) -> None:
    ensure_template(es_client)
    topic, dlq = make_topic(partitions=3, config=LOG_APPEND), make_topic(partitions=1)
    group = f"g-{topic}"
    conf = {"topic": topic, "dlq_topic": dlq, "index_prefix": fresh_index_prefix, "group_id": group}
    poison = [(b"bad", v) for _, v in poison_values()]
    delivered = produce(kafka_bootstrap, topic, [quote_value(i) for i in range(200)] + poison)
    time.sleep(0.1)
    end = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    wait_past(end.timestamp())

    run = dag.test(logical_date=end, run_conf=conf)
    assert str(run.state) == "success", task_states(run)
    assert task_states(run) == {"index_window": "success"}  # the whole window in one task instance
    (summary,) = returns(run)["index_window"]
    assert (summary["read"], summary["indexed"], summary["dead_lettered"]) == (204, 200, 4)
    docs = es_sources(es_client, fresh_index_prefix)
    assert {i: (d["symbol"], d["price"]) for i, d in docs.items()} == expected_docs(topic, delivered)
    ends: dict[int, int] = {}
    for p, o, _, _ in delivered:
        ends[p] = max(ends.get(p, 0), o + 1)
    assert committed(kafka_bootstrap, topic, group, 3) == ends

    rerun = dag.test(logical_date=end, run_conf=conf)
    assert str(rerun.state) == "success", task_states(rerun)
    assert es_sources(es_client, fresh_index_prefix) == docs
    assert len(dead_letters(kafka_bootstrap, dlq)) == 4


def test_consecutive_windows_index_each_record_once_and_reruns_change_nothing(
    mapped_dag, kafka_bootstrap, es_client, make_topic, fresh_index_prefix
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

    first = mapped_dag.test(logical_date=boundary, run_conf={**conf, "partition_groups": 2})
    assert str(first.state) == "success", task_states(first)
    got = returns(first)
    assert len(got["index_group"]) == 2  # one mapped task per partition group
    assert got["finish"][0]["read"] == got["finish"][0]["indexed"] == 500
    wait_past((boundary + timedelta(seconds=30)).timestamp() + 0.5)
    second = mapped_dag.test(logical_date=boundary + timedelta(seconds=30), run_conf={**conf, "partition_groups": 3})
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
        rerun = mapped_dag.test(logical_date=logical_date, run_conf=conf)
        assert str(rerun.state) == "success", task_states(rerun)
    assert es_sources(es_client, fresh_index_prefix) == docs
    assert committed(kafka_bootstrap, topic, group, 3) == ends
    assert len(dead_letters(kafka_bootstrap, dlq)) == 4  # re-runs do not dead-letter twice either


@pytest.mark.parametrize("layout", ["single", "mapped"])
def test_createtime_topic_fails_the_run_without_retrying(
    layout, dag, mapped_dag, kafka_bootstrap, es_client, make_topic, fresh_index_prefix
):
    topic = make_topic(partitions=1, config={"message.timestamp.type": "CreateTime"})
    produce(kafka_bootstrap, topic, [quote_value(1)])
    time.sleep(0.2)
    run = (dag if layout == "single" else mapped_dag).test(
        logical_date=datetime.now(UTC) - timedelta(seconds=1),
        run_conf={"topic": topic, "index_prefix": fresh_index_prefix, "group_id": f"g-{topic}"},
    )
    assert str(run.state) == "failed"
    states = task_states(run)
    if layout == "single":
        assert states == {"index_window": "failed"}
    else:
        assert states["plan"] == "failed" and states.get("finish") in ("upstream_failed", None)
    assert es_count(es_client, fresh_index_prefix) == 0
