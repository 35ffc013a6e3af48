"""An indexer window whose indexing task exhausts its retries under the real scheduler, then the repair.

The fault is real and touches nothing shared but the pipeline's own daily index (near midnight, also
the next day's): a write block (``index.blocks.write``) makes Elasticsearch refuse every bulk item
with 403 ``cluster_block_exception``, which the bulk writer treats as neither transient nor the
document's fault, so each try fails at once and nothing is dead-lettered. Then, through Airflow's
REST API, Kafka and Elasticsearch: every try of that window's ``index_window`` (or, with mapped
partition groups, of each ``index_group``, and ``finish`` never ran: ``upstream_failed``) failed and
the group's committed offsets did not pass the window's start; once the block is lifted later
windows succeed; ``quotes_reconcile`` (repair on) reports exactly the hole and fills it, after which
Elasticsearch holds every Kafka record of the period.

Runs after test_pipeline.py (file order), which asserts that no indexer window failed, and
before test_shutdown.py, which ends the producer run.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from elasticsearch import Elasticsearch

from tests.helpers.e2e import airflow_write, committed, epoch_ms, offsets_at
from tests.helpers.waiting import wait_until

DAG = "/api/v2/dags/quotes_indexer"
GROUP = "quoteflow-indexer"
FAIL_TIMEOUT_S = 420  # the first window to meet the block, through all its retries (10-20, 20-40, 40-80 s)
RECOVER_TIMEOUT_S = 300
RECONCILE_TIMEOUT_S = 420
TERMINAL = {"success", "failed", "upstream_failed", "skipped", "removed"}


def _indices_to_block(es: Elasticsearch, newest: str) -> list[str]:
    """The daily index in use, and near UTC midnight also the next day's (created now, so the block is in place)."""
    now = datetime.now(UTC)
    if (now + timedelta(minutes=15)).date() == now.date():
        return [newest]
    tomorrow = f"quotes-tradingview-{(now + timedelta(days=1)):%Y.%m.%d}"
    es.options(ignore_status=400).indices.create(index=tomorrow)  # 400: it exists already
    return [newest, tomorrow]


def _newest_index(es: Elasticsearch, pipeline) -> str:
    """The daily index the pipeline writes to now: that of its newest document."""

    def newest():
        es.indices.refresh(index="quotes-tradingview-*")
        hits = es.search(
            index="quotes-tradingview-*",
            size=1,
            sort=[{"kafka.timestamp": "desc"}],
            query={"term": {"kafka.topic": pipeline.topic}},
        )["hits"]["hits"]
        fresh = hits and epoch_ms(hits[0]["_source"]["kafka"]["timestamp"]) > pipeline.started_at * 1000
        return hits[0]["_index"] if fresh else None

    return wait_until("a document indexed by this pipeline", newest, 420, interval=5)


def _task_instances(pipeline, run_id: str, task_id: str) -> list[dict]:
    tis = pipeline.api(f"{DAG}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    return sorted((t for t in tis if t["task_id"] == task_id), key=lambda t: t["map_index"])


def _index_task(pipeline) -> str:
    """The task that indexes: ``index_window`` (one task per window, the default) or the mapped ``index_group``."""
    ids = {t["task_id"] for t in pipeline.api(f"{DAG}/tasks")["tasks"]}
    return "index_group" if "index_group" in ids else "index_window"


def _plan(pipeline, run: dict, index_task: str) -> list[list[dict]]:
    """The window's ranges per group: the plan task's XCom, or (one task per window) Kafka's offsets of the window."""
    if index_task == "index_window":
        starts = offsets_at(pipeline.kafka_bootstrap, pipeline.topic, int(epoch_ms(run["data_interval_start"])))
        ends = offsets_at(pipeline.kafka_bootstrap, pipeline.topic, int(epoch_ms(run["data_interval_end"])))
        return [[{"partition": p, "start": starts[p], "end": ends[p]} for p in sorted(starts)]]
    entry = pipeline.api(
        f"{DAG}/dagRuns/{run['dag_run_id']}/taskInstances/plan/xcomEntries/return_value"
        "?deserialize=true&stringify=false"
    )
    return entry["value"]


def _first_window_to_fail(pipeline, since_ms: float, index_task: str) -> str:
    """The run id of the first indexer window whose indexing task failed a try after ``since_ms``."""

    def failing():
        runs = pipeline.api(f"{DAG}/dagRuns?order_by=-run_after&limit=10")["dag_runs"]
        for run in runs:
            if run["state"] not in ("running", "failed") or (run["end_date"] and epoch_ms(run["end_date"]) < since_ms):
                continue
            groups = _task_instances(pipeline, run["dag_run_id"], index_task)
            if any(t["state"] in ("up_for_retry", "failed") for t in groups):
                return run["dag_run_id"]
        return None

    return wait_until(f"an {index_task} try refused by the write block", failing, FAIL_TIMEOUT_S, interval=2)


def _es_count(es: Elasticsearch, topic: str, ranges: list[dict]) -> int:
    es.indices.refresh(index="quotes-tradingview-*")
    should = [
        {
            "bool": {
                "filter": [
                    {"term": {"kafka.partition": r["partition"]}},
                    {"range": {"kafka.offset": {"gte": r["start"], "lt": r["end"]}}},
                ]
            }
        }
        for r in ranges
        if r["end"] > r["start"]
    ]
    if not should:
        return 0
    query = {"bool": {"filter": [{"term": {"kafka.topic": topic}}], "should": should, "minimum_should_match": 1}}
    return es.count(index="quotes-tradingview-*", query=query)["count"]


def _overlap(a: dict, b: dict) -> int:
    if a["partition"] != b["partition"]:
        return 0
    return max(0, min(a["end"], b["end"]) - max(a["start"], b["start"]))


def test_a_window_that_exhausts_its_retries_is_reported_and_repaired_by_reconcile(pipeline) -> None:
    es = Elasticsearch(pipeline.es_url, request_timeout=30)
    indices = _indices_to_block(es, _newest_index(es, pipeline))
    index_task = _index_task(pipeline)
    retries = int(pipeline.api(f"{DAG}/tasks/{index_task}")["retries"])

    blocked_at = time.time() * 1000
    es.indices.put_settings(index=",".join(indices), settings={"index.blocks.write": True})
    try:
        run_id = _first_window_to_fail(pipeline, blocked_at, index_task)

        def groups_done():
            groups = _task_instances(pipeline, run_id, index_task)
            return groups if groups and all(t["state"] in TERMINAL for t in groups) else None

        groups = wait_until(f"every {index_task} of {run_id} done", groups_done, FAIL_TIMEOUT_S, interval=1)
    finally:
        es.indices.put_settings(index=",".join(indices), settings={"index.blocks.write": None})
    # Read at once: the next window needs several task processes before its finish could commit.
    committed_after_failure = committed(pipeline.kafka_bootstrap, GROUP, pipeline.topic)

    plan = _plan(pipeline, pipeline.api(f"{DAG}/dagRuns/{run_id}"), index_task)
    print(f"{run_id} failed against the write block on {indices}; its plan: {plan}")
    for ti, ranges in zip(groups, plan, strict=True):
        has_records = any(r["end"] > r["start"] for r in ranges)
        mapped = f"/{ti['map_index']}" if ti["map_index"] >= 0 else ""
        tries = pipeline.api(f"{DAG}/dagRuns/{run_id}/taskInstances/{index_task}{mapped}/tries")["task_instances"]
        if has_records:
            assert [t["state"] for t in tries] == ["failed"] * (retries + 1), (
                f"{index_task}[{ti['map_index']}] over {ranges}: tries "
                f"{[(t['try_number'], t['state']) for t in tries]}, expected all {retries + 1} failed"
            )
        else:
            assert ti["state"] == "success", (
                f"{index_task}[{ti['map_index']}] has nothing to index but is {ti['state']}"
            )
    target = [r for ranges in plan for r in ranges if r["end"] > r["start"]]
    assert target, f"{run_id} had no records to index; nothing was proven"

    run = wait_until(
        f"{run_id} marked failed",
        lambda: (lambda r: r if r["state"] == "failed" else None)(pipeline.api(f"{DAG}/dagRuns/{run_id}")),
        120,
    )
    if index_task == "index_group":  # one task per window has no separate finish: it failed before committing
        finish = _task_instances(pipeline, run_id, "finish")
        assert [t["state"] for t in finish] == ["upstream_failed"], f"finish of the failed window: {finish}"
    for r in target:
        assert committed_after_failure[r["partition"]] <= r["start"], (
            f"partition {r['partition']}: the group committed {committed_after_failure[r['partition']]}, past the "
            f"failed window's start {r['start']}"
        )
    missing_before = sum(r["end"] - r["start"] for r in target) - _es_count(es, pipeline.topic, target)
    assert missing_before > 0, f"the failed window {target} is fully in Elasticsearch: the block did not bite"

    # Later windows go on, and their commits move past the hole.
    def later_successes():
        runs = pipeline.api(f"{DAG}/dagRuns?state=success&order_by=-run_after&limit=20")["dag_runs"]
        later = [x for x in runs if epoch_ms(x["data_interval_start"]) >= epoch_ms(run["data_interval_end"])]
        return later if len(later) >= 2 else None

    later = wait_until("two successful windows after the failed one", later_successes, RECOVER_TIMEOUT_S, interval=3)
    print(f"later windows succeeded: {[x['dag_run_id'] for x in later]}")
    upper = committed(pipeline.kafka_bootstrap, GROUP, pipeline.topic)
    for r in target:
        assert upper[r["partition"]] >= r["end"], f"partition {r['partition']}: committed {upper} not past the hole"

    reconcile_run = airflow_write(
        pipeline,
        "POST",
        "/api/v2/dags/quotes_reconcile/dagRuns",
        {"logical_date": None, "conf": {"repair": True, "until": "committed"}},
    )["dag_run_id"]

    def reconciled():
        state = pipeline.api(f"/api/v2/dags/quotes_reconcile/dagRuns/{reconcile_run}")["state"]
        return state if state in ("success", "failed") else None

    state = wait_until(f"quotes_reconcile run {reconcile_run}", reconciled, RECONCILE_TIMEOUT_S, interval=3)
    assert state == "success", f"quotes_reconcile {reconcile_run} ended {state}"
    report = pipeline.api(
        f"/api/v2/dags/quotes_reconcile/dagRuns/{reconcile_run}/taskInstances/reconcile/xcomEntries/return_value"
        "?deserialize=true&stringify=false"
    )["value"]
    print(
        f"reconcile: {report['missing']} missing in {len(report['holes'])} hole(s), {report['repaired']} repaired, "
        f"{report.get('missing_after_repair')} left"
    )
    reported = sum(_overlap(h, r) for h in report["holes"] for r in target)
    assert reported == missing_before, (
        f"the failed window lacks {missing_before} documents but reconcile reports {reported} of them "
        f"(target {target}, holes {report['holes']})"
    )
    assert report["repaired"] >= missing_before and report.get("missing_after_repair") == 0, report

    # Afterwards Elasticsearch holds every Kafka record of the period: the failed window's start to the commit.
    period = [{**r, "end": upper[r["partition"]]} for r in target]
    kafka_records = sum(r["end"] - r["start"] for r in period)
    indexed = _es_count(es, pipeline.topic, period)
    print(f"period {period}: {kafka_records} records in Kafka, {indexed} documents in Elasticsearch")
    assert indexed == kafka_records
    assert _es_count(es, pipeline.topic, target) == sum(r["end"] - r["start"] for r in target)
    # The window's offsets as Kafka states them now: the plan was exact.
    starts = offsets_at(pipeline.kafka_bootstrap, pipeline.topic, int(epoch_ms(run["data_interval_start"])))
    ends = offsets_at(pipeline.kafka_bootstrap, pipeline.topic, int(epoch_ms(run["data_interval_end"])))
    assert {r["partition"]: (r["start"], r["end"]) for r in target} == {
        p: (starts[p], ends[p]) for p in starts if ends[p] > starts[p]
    }
