"""`make run SOURCE=replay`: quotes flow from the local feed through Airflow's producer and indexer into ES."""

from __future__ import annotations

import time
from datetime import datetime

from elasticsearch import Elasticsearch

from tests.helpers.waiting import wait_until

DEFAULT_SYMBOLS = ("BINANCE:SOLUSDT", "BINANCE:BTCUSDT", "BINANCE:ETHUSDT")
DEADLINE = 420


def _successful_indexer_runs(pipeline, since: float) -> list[dict]:
    runs = pipeline.api("/api/v2/dags/quotes_indexer/dagRuns?state=success&order_by=-run_after&limit=100")["dag_runs"]
    return [r for r in runs if datetime.fromisoformat(r["data_interval_end"]).timestamp() > since]


def _new_docs_filter(pipeline) -> dict:
    """Documents of records the pipeline wrote after this test started (offsets past the pre-test end)."""
    per_partition = [
        {
            "bool": {
                "filter": [
                    {"term": {"kafka.partition": p}},
                    {"range": {"kafka.offset": {"gte": pipeline.start_offsets.get(p, 0)}}},
                ]
            }
        }
        for p in range(64)
    ]
    return {
        "bool": {
            "filter": [{"term": {"kafka.topic": pipeline.topic}}],
            "should": per_partition,
            "minimum_should_match": 1,
        }
    }


def test_quotes_reach_elasticsearch_through_airflow(pipeline) -> None:
    es = Elasticsearch(pipeline.es_url, request_timeout=30)
    print(f"make run SOURCE=replay returned after {pipeline.start_seconds:.0f} s")

    setup_runs = pipeline.api("/api/v2/dags/quotes_setup/dagRuns?order_by=-run_after&limit=5")["dag_runs"]
    assert setup_runs and setup_runs[0]["state"] == "success", setup_runs

    def symbols_indexed():
        if not es.indices.exists(index="quotes-tradingview-*"):
            return None
        es.indices.refresh(index="quotes-tradingview-*")
        resp = es.search(
            index="quotes-tradingview-*",
            size=0,
            query=_new_docs_filter(pipeline),
            aggs={"symbols": {"terms": {"field": "symbol", "size": 50}}},
        )
        # A wildcard that matches no index yet answers with no shards and no aggregations.
        buckets = resp.get("aggregations", {}).get("symbols", {}).get("buckets", [])
        found = {b["key"] for b in buckets}
        return found if set(DEFAULT_SYMBOLS) <= found else None

    found = wait_until("quotes of every default symbol in Elasticsearch", symbols_indexed, DEADLINE, interval=5)
    searchable_after = time.time() - pipeline.started_at
    print(f"quotes for {sorted(found)} searchable {searchable_after:.0f} s after make run started")

    runs = wait_until(
        "two successful quotes_indexer windows after the start",
        lambda: (lambda r: r if len(r) >= 2 else None)(_successful_indexer_runs(pipeline, pipeline.started_at)),
        DEADLINE,
        interval=5,
    )
    # Every window up to the newest successful one is closed: ES must hold exactly the Kafka records before its end.
    closed_end = max(datetime.fromisoformat(r["data_interval_end"]) for r in runs)
    failed = pipeline.api("/api/v2/dags/quotes_indexer/dagRuns?state=failed&limit=100")["dag_runs"]
    assert not failed, f"indexer windows failed: {[r['run_id'] for r in failed]}"

    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": pipeline.kafka_bootstrap, "group.id": "quoteflow-e2e-probe"})
    try:
        partitions = sorted(consumer.list_topics(pipeline.topic, timeout=10).topics[pipeline.topic].partitions)
        ends = consumer.offsets_for_times(
            [TopicPartition(pipeline.topic, p, int(closed_end.timestamp() * 1000)) for p in partitions], timeout=10
        )
        expected = 0
        for tp in ends:
            end = tp.offset if tp.offset >= 0 else consumer.get_watermark_offsets(tp, timeout=10)[1]
            expected += max(0, end - pipeline.start_offsets.get(tp.partition, 0))
    finally:
        consumer.close()
    es.indices.refresh(index="quotes-tradingview-*")
    query = _new_docs_filter(pipeline)
    query["bool"]["filter"].append({"range": {"kafka.timestamp": {"lt": closed_end.isoformat()}}})
    indexed = es.count(index="quotes-tradingview-*", query=query)["count"]
    print(f"closed windows up to {closed_end.isoformat()}: {expected} records in Kafka, {indexed} documents in ES")
    assert expected > 0
    assert indexed == expected


def test_the_pipeline_tidies_itself_under_the_real_scheduler(pipeline) -> None:
    """make run unpauses quotes_maintenance: its first daily run (db clean, index retention, DLQ report) succeeds."""

    def finished() -> list[dict] | None:
        runs = pipeline.api("/api/v2/dags/quotes_maintenance/dagRuns?limit=10")["dag_runs"]
        done = [r for r in runs if r["state"] in ("success", "failed")]
        return done or None

    runs = wait_until("a finished quotes_maintenance run", finished, DEADLINE, interval=5)
    assert {r["state"] for r in runs} == {"success"}, runs
    tis = pipeline.api(f"/api/v2/dags/quotes_maintenance/dagRuns/{runs[0]['dag_run_id']}/taskInstances")
    assert {t["task_id"]: t["state"] for t in tis["task_instances"]} == {
        "clean_metadata": "success",
        "index_retention": "success",
        "dlq_report": "success",
    }
