"""quotes_producer: its shape, a dag.test() run against the local feed (one mapped task per shard), a clean
stop via on_kill (also during a shard's start delay), and configuration errors that fail the task once
instead of being retried; a shard that fails for good leaves the others' results intact."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from quoteflow.tradingview.feed_server import FeedConfig, FeedServer, synthetic_universe
from tests.helpers.dags import returns
from tests.helpers.producing import LOG_APPEND, read_topic, volumes_by_symbol

DAGS = Path(__file__).resolve().parents[2] / "dags"
SYMBOLS = synthetic_universe(3)
# Bars off: these runs stream to their own quotes topic and must not write the shared bars/gaps topics.
NO_BARS = {"bar_resolutions": []}


@pytest.fixture
def dag():
    """A freshly parsed DAG per test: dag.test(run_conf=...) leaves the conf in the DAG object's Params."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / "quotes_producer.py"))
    assert bag.import_errors == {}
    return bag.dags["quotes_producer"]


@pytest.fixture
def fast_tradingview_conn(monkeypatch):
    """Short client intervals through the optional tradingview_default connection's extra."""
    extra = {"poll_interval": 0.1, "watchdog_timeout": 3.0, "backoff_initial": 0.1, "backoff_cap": 0.5}
    monkeypatch.setenv("AIRFLOW_CONN_TRADINGVIEW_DEFAULT", json.dumps({"conn_type": "generic", "extra": extra}))


@pytest.fixture
def feed_server():
    server = FeedServer(
        FeedConfig(synthetic_symbols=3, rate=300, packets_per_message=3, heartbeat_interval=0.5, seed=3)
    ).start()
    yield server
    server.stop()


def test_dag_is_continuous_single_run_with_typed_titled_params(dag):
    from airflow.sdk import BaseOperator

    assert type(dag.timetable).__name__ == "ContinuousTimetable"
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert {"quoteflow", "producer"} <= set(dag.tags)
    assert sorted(t.task_id for t in dag.tasks) == ["plan_shards", "produce_quotes"]
    task = dag.get_task("produce_quotes")
    assert type(task).__name__ == "MappedOperator"  # one task instance per shard
    assert task.upstream_task_ids == {"plan_shards"}
    assert task.retries >= 2 and task.retry_exponential_backoff
    assert task.operator_class.on_kill is not BaseOperator.on_kill
    params = dag.params
    assert params["symbols"] == ["BINANCE:SOLUSDT", "BINANCE:BTCUSDT", "BINANCE:ETHUSDT"]
    assert params["max_runtime_minutes"] == 60
    assert params["topic"] == "quotes.tradingview"
    assert params["url"].startswith("wss://data.tradingview.com")
    assert params["shard_size"] == 500 and params["connect_spacing_seconds"] == 5.0
    assert params.get_param("shard_size").schema["minimum"] == 1
    for name in ("symbols", "max_runtime_minutes", "topic", "url", "shard_size", "connect_spacing_seconds"):
        schema = params.get_param(name).schema
        assert schema.get("title") and schema.get("type"), name


def test_dag_test_streams_into_kafka_and_returns_its_summary(dag, feed_server, make_topic, kafka_bootstrap,
                                                             fast_tradingview_conn):  # fmt: skip
    topic = make_topic(1, LOG_APPEND)
    started = time.monotonic()
    run = dag.test(
        run_conf={**NO_BARS, "max_runtime_minutes": 0.05, "url": feed_server.url, "topic": topic, "symbols": SYMBOLS}
    )
    elapsed = time.monotonic() - started
    assert run.state == "success"
    assert elapsed < 30
    (ti,) = [ti for ti in run.get_task_instances() if ti.task_id == "produce_quotes"]
    assert ti.state == "success" and ti.map_index == 0  # 3 symbols, shard_size 500: one shard
    (summary,) = returns(run)["produce_quotes"]
    assert summary["shard"] == "0" and summary["symbols"] == 3
    assert summary["stopped_by"] == "max_seconds"
    assert 2.5 <= summary["seconds"] <= 6.0
    assert summary["quotes"] > 100 and summary["reconnects"] == 0 and summary["errors"] == {}
    records = read_topic(kafka_bootstrap, topic, expect=summary["quotes"])
    assert len(records) == summary["quotes"]
    for symbol, seen in volumes_by_symbol(records).items():
        assert seen == [float(i) for i in range(1, len(seen) + 1)], symbol


def test_shards_map_one_task_each_from_the_params(dag, make_topic, kafka_bootstrap, fast_tradingview_conn):
    symbols = synthetic_universe(7)
    server = FeedServer(FeedConfig(synthetic_symbols=7, rate=300, packets_per_message=3, heartbeat_interval=0.5))
    topic = make_topic(1, LOG_APPEND)
    conf = {**NO_BARS, "max_runtime_minutes": 0.05, "url": server.start().url, "topic": topic, "symbols": symbols,
            "shard_size": 3, "connect_spacing_seconds": 0.4}  # fmt: skip
    dag.get_task("produce_quotes").partial_kwargs["stats_interval_s"] = 0.5  # interim stats within the short run
    try:
        run = dag.test(run_conf=conf)
    finally:
        server.stop()
    assert run.state == "success"
    tis = sorted((ti for ti in run.get_task_instances() if ti.task_id == "produce_quotes"), key=lambda t: t.map_index)
    assert [ti.map_index for ti in tis] == [0, 1, 2]  # ceil(7 / 3) shards
    assert [ti.rendered_map_index for ti in tis] == ["shard 0", "shard 1", "shard 2"]
    assert {str(ti.state) for ti in tis} == {"success"}
    (plan,) = returns(run)["plan_shards"]
    assert [len(s["symbols"]) for s in plan] == [3, 2, 2]
    assert plan[0]["start_delay_s"] == 0 and 0.4 <= plan[1]["start_delay_s"] < plan[2]["start_delay_s"] <= 1.2
    summaries = returns(run)["produce_quotes"]
    assert [(s["shard"], s["symbols"]) for s in summaries] == [("0", 3), ("1", 2), ("2", 2)]
    assert all(s["quotes"] > 20 and s["connects"] == 1 for s in summaries)
    # The start delay counts against max_runtime: shard 2 streamed for less than shard 0.
    assert summaries[2]["seconds"] < summaries[0]["seconds"]
    records = read_topic(kafka_bootstrap, topic, expect=sum(s["quotes"] for s in summaries))
    assert set(volumes_by_symbol(records)) == set(symbols)  # every symbol streamed, by exactly one shard
    assert server.stats.connections == 3
    # Each shard's interim stats (the live view's health rows) in XCom "stats", under its own map index.
    stats = _xcoms(run, "produce_quotes", "stats")
    assert sorted(stats) == [0, 1, 2]
    for index, row in stats.items():
        assert row["shard"] == str(index) and row["symbols"] == len(plan[index]["symbols"])
        assert row["connects"] == 1 and row["quotes"] > 0 and row["no_tick_yet"] == 0


def _xcoms(run, task_id: str, key: str) -> dict[int, dict]:
    """``{map_index: value}`` of one XCom key of a task in a finished run."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.run_id == run.run_id, XComModel.dag_id == run.dag_id,
                                               XComModel.task_id == task_id, XComModel.key == key).all()  # fmt: skip
        return {row.map_index: row.value for row in rows}


@pytest.mark.parametrize(("conf", "named"), [({"shard_size": 0}, "shard_size"),
                                             ({"shard_size": 5001}, "shard_size"),
                                             ({"connect_spacing_seconds": -1}, "connect_spacing_seconds")])  # fmt: skip
def test_an_out_of_range_shard_setting_is_refused_before_the_run_naming_the_param(dag, conf, named):
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError, match=named):
        dag.test(run_conf=conf)


def test_a_plan_whose_last_shard_would_never_stream_fails_once_naming_the_fixes(dag, capfd):
    conf = {"symbols": synthetic_universe(40), "shard_size": 1, "connect_spacing_seconds": 60,
            "max_runtime_minutes": 5}  # fmt: skip
    run = dag.test(run_conf=conf)
    log = "".join(capfd.readouterr())
    assert str(run.state) == "failed"
    states = {ti.task_id: (str(ti.state), ti.try_number) for ti in run.get_task_instances()}
    assert states["plan_shards"] == ("failed", 1)  # no retries: a retry cannot fix the Params
    assert "40 shards of at most 1 symbols" in log
    assert "raise shard_size, lower connect_spacing_seconds or raise max_runtime_minutes" in log


def test_a_shard_that_fails_for_good_leaves_the_other_shards_streaming(dag, make_topic, kafka_bootstrap,
                                                                      fast_tradingview_conn, capfd):  # fmt: skip
    server = FeedServer(FeedConfig(synthetic_symbols=4, rate=300, packets_per_message=3, heartbeat_interval=0.5))
    topic = make_topic(1, LOG_APPEND)
    symbols = ["NOPE:AAA", "NOPE:BBB", *synthetic_universe(4)]  # shard 0 = the two unknown symbols
    conf = {**NO_BARS, "max_runtime_minutes": 0.05, "url": server.start().url, "topic": topic, "symbols": symbols,
            "shard_size": 2, "connect_spacing_seconds": 0.2}  # fmt: skip
    try:
        run = dag.test(run_conf=conf)
    finally:
        server.stop()
    log = "".join(capfd.readouterr())
    assert str(run.state) == "failed"  # ...only once every shard has ended
    tis = {ti.map_index: ti for ti in run.get_task_instances() if ti.task_id == "produce_quotes"}
    assert (str(tis[0].state), tis[0].try_number) == ("failed", 1)
    assert {str(tis[i].state) for i in (1, 2)} == {"success"}
    assert "TradingView refused every symbol" in log
    summaries = [s for s in returns(run)["produce_quotes"] if s]
    assert sorted(s["shard"] for s in summaries) == ["1", "2"] and all(s["quotes"] > 20 for s in summaries)
    records = read_topic(kafka_bootstrap, topic, expect=sum(s["quotes"] for s in summaries))
    assert set(volumes_by_symbol(records)) == set(synthetic_universe(4))
    _run_fails_only_when_the_last_shard_ends(run)


def _run_fails_only_when_the_last_shard_ends(run) -> None:
    """Airflow's own DagRun.update_state (what the scheduler calls) on this run, replayed with shards 1 and 2
    still streaming: the failed shard 0 does not end the run; it fails when the last healthy shard ends."""
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState

    with create_session() as session:
        dr = session.merge(run)
        dr.dag = run.dag
        tis = {ti.map_index: ti for ti in dr.get_task_instances(session=session) if ti.task_id == "produce_quotes"}
        seen = []
        for streaming in ((1, 2), (2,), ()):
            for index in (1, 2):
                tis[index].state = TaskInstanceState.RUNNING if index in streaming else TaskInstanceState.SUCCESS
            dr.state = DagRunState.RUNNING
            session.flush()
            dr.update_state(session=session, execute_callbacks=False)
            seen.append(str(dr.state))
        session.rollback()
    assert seen == ["running", "running", "failed"]


def _operator_class():
    from airflow.dag_processing.dagbag import DagBag

    # A DAG of its own: on_kill leaves the operator's stop flag set, which must not stop later tests' runs.
    return (
        DagBag(dag_folder=str(DAGS / "quotes_producer.py"))
        .dags["quotes_producer"]
        .get_task("produce_quotes")
        .operator_class
    )


def test_on_kill_during_a_shards_start_delay_returns_at_once_without_connecting(feed_server, make_topic,
                                                                                fast_tradingview_conn):  # fmt: skip
    shard = {"shard": "4", "symbols": SYMBOLS, "start_delay_s": 120.0}
    task = _operator_class()(task_id="produce_quotes_delayed", shard=shard)
    context = {"params": {"max_runtime_minutes": 10, "url": feed_server.url, "topic": make_topic(1, LOG_APPEND),
                          "symbols": ["IGNORED:WHEN_SHARDED"]}}  # fmt: skip
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(summary=task.execute(context), at=time.monotonic()))
    worker.start()
    time.sleep(1.5)
    assert worker.is_alive() and feed_server.stats.connections == 0  # still waiting its turn
    killed_at = time.monotonic()
    task.on_kill()
    worker.join(timeout=10)
    assert not worker.is_alive() and result["at"] - killed_at < 5.0
    assert result["summary"]["shard"] == "4" and result["summary"]["stopped_by"] == "stop_request"
    assert result["summary"]["quotes"] == 0 and feed_server.stats.connections == 0


def test_on_kill_flushes_and_returns_within_5_seconds(feed_server, make_topic, kafka_bootstrap, fast_tradingview_conn):
    topic = make_topic(1, LOG_APPEND)
    task = _operator_class()(task_id="produce_quotes_unsharded")  # no shard: the symbols Param, one connection
    context = {"params": {"max_runtime_minutes": 10, "url": feed_server.url, "topic": topic, "symbols": SYMBOLS}}
    result: dict = {}

    def execute():
        result["summary"] = task.execute(context)
        result["returned_at"] = time.monotonic()

    worker = threading.Thread(target=execute)
    worker.start()
    time.sleep(2.5)
    assert worker.is_alive()
    killed_at = time.monotonic()
    task.on_kill()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert result["returned_at"] - killed_at < 5.0
    summary = result["summary"]
    assert summary["stopped_by"] == "stop_request"
    assert summary["quotes"] == summary["quotes_sent"] > 100  # everything queued was delivered by the flush
    assert len(read_topic(kafka_bootstrap, topic, expect=summary["quotes"])) == summary["quotes"]


def _only_try(run):
    """The one produce_quotes task instance (one shard) of a finished run, after asserting the run failed."""
    assert str(run.state) == "failed"
    tis = [ti for ti in run.get_task_instances() if ti.task_id == "produce_quotes"]
    (ti,) = tis
    assert ti.map_index == 0
    return ti


def test_a_token_bound_for_a_foreign_host_fails_once_without_retrying(dag, monkeypatch, capfd):
    conn = {"conn_type": "generic", "password": "user-token-xyz", "extra": {"backoff_cap": 0.5}}
    monkeypatch.setenv("AIRFLOW_CONN_TRADINGVIEW_DEFAULT", json.dumps(conn))
    started = time.monotonic()
    run = dag.test(run_conf={"url": "wss://data.tradingview.com.evil.example/socket.io/websocket"})
    log = "".join(capfd.readouterr())  # the task's log, as Airflow's task runner writes it
    ti = _only_try(run)
    assert str(ti.state) == "failed" and ti.try_number == 1  # not up_for_retry: no second try follows
    assert time.monotonic() - started < 60  # a retry would wait out retry_delay (15 s, then 30 s, ...)
    assert "refusing to send the TradingView auth token" in log
    assert "wss://data.tradingview.com.evil.example:443" in log
    assert "host of connection 'tradingview_default'" in log and "remove the password" in log
    assert "user-token-xyz" not in log


def test_every_symbol_refused_fails_once_without_retrying(dag, feed_server, make_topic, fast_tradingview_conn, capfd):
    topic = make_topic(1, LOG_APPEND)
    run = dag.test(
        run_conf={**NO_BARS, "url": feed_server.url, "topic": topic, "symbols": ["NOPE:NOSUCH", "NOPE:OTHER"]}
    )
    log = "".join(capfd.readouterr())
    ti = _only_try(run)
    assert str(ti.state) == "failed" and ti.try_number == 1
    assert "TradingView refused every symbol" in log and "fix the symbol list" in log
    assert feed_server.stats.connections == 1  # one try, one connection: no reconnect loop either


def test_a_missing_topic_fails_once_without_retrying(dag, feed_server, fast_tradingview_conn, capfd):
    run = dag.test(run_conf={"url": feed_server.url, "topic": "quotes.no-such-topic.producer-dag-test"})
    log = "".join(capfd.readouterr())
    ti = _only_try(run)
    assert str(ti.state) == "failed" and ti.try_number == 1
    assert "does not exist" in log
    assert feed_server.stats.connections == 0  # refused before any data moved
