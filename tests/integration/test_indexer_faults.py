"""Failures provoked by real means: kill -9 mid-window, Elasticsearch stopped, 429s from a loopback proxy."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from quoteflow.elastic.bulk import ElasticsearchUnavailable, RetryPolicy
from quoteflow.elastic.template import ensure_template
from quoteflow.indexer import IndexSummary, index_ranges, index_window, plan_window
from quoteflow.streams import Names
from tests.helpers.indexing import (
    LOG_APPEND,
    committed,
    dead_letters,
    es_count,
    es_sources,
    expected_docs,
    produce,
    quote_value,
)
from tests.helpers.services import service_is_up, start_service, stop_service

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(kafka_bootstrap, es_client, es_url, make_topic, fresh_index_prefix):
    ensure_template(es_client)
    topic = make_topic(partitions=2, config=LOG_APPEND)
    return {
        "cfg": {"bootstrap.servers": kafka_bootstrap},
        "es": es_client,
        "es_url": es_url,
        "topic": topic,
        "dlq": make_topic(partitions=1),
        "prefix": fresh_index_prefix,
        "group": f"g-{topic}",
        "bootstrap": kafka_bootstrap,
    }


def _kw(env, **changes: str) -> dict:
    """The names of the test's quotes stream, as the one value the indexer, backfill and reconcile take."""
    names = {"topic": env["topic"], "index_prefix": env["prefix"], "dlq_topic": env["dlq"], "group_id": env["group"]}
    return {"names": Names.quotes_only(**{**names, **changes})}


def _cli(env, start: datetime, end: datetime) -> list[str]:
    return [
        sys.executable, "-m", "quoteflow", "index", "--start", start.isoformat(), "--end", end.isoformat(),
        "--topic", env["topic"], "--dlq-topic", env["dlq"], "--index-prefix", env["prefix"], "--group", env["group"],
    ]  # fmt: skip


def _cli_env(env) -> dict[str, str]:
    host, port = env["es_url"].rsplit(":", 1)
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AIRFLOW_CONN_KAFKA_DEFAULT": json.dumps({"conn_type": "kafka", "extra": env["cfg"]}),
        "AIRFLOW_CONN_ELASTICSEARCH_DEFAULT": json.dumps(
            {"conn_type": "elasticsearch", "host": host.split("//")[1], "port": int(port)}
        ),
    }


def _count_or_zero(es, prefix: str, refresh: bool = False) -> int:
    """Document count, or 0 while the first index is still starting its shard (503)."""
    from elasticsearch import ApiError

    client = es.options(max_retries=0)
    try:
        if refresh:
            client.indices.refresh(index=f"{prefix}*", allow_no_indices=True)
        return client.count(index=f"{prefix}*", allow_no_indices=True)["count"]
    except ApiError as exc:
        if exc.status_code != 503:
            raise
        return 0


def test_kill_9_mid_window_then_rerun_is_exact(env) -> None:
    start = datetime.now(UTC)
    time.sleep(0.05)
    delivered = produce(env["bootstrap"], env["topic"], [quote_value(i) for i in range(120_000)])
    time.sleep(0.05)
    end = datetime.now(UTC)
    proc = subprocess.Popen(_cli(env, start, end), env=_cli_env(env), cwd=ROOT, stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while _count_or_zero(env["es"], env["prefix"], refresh=True) == 0:
            assert proc.poll() is None, "the indexer finished before it could be killed"
            assert time.monotonic() < deadline, "the indexer indexed nothing within 60 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    partial = es_count(env["es"], env["prefix"])
    assert 0 < partial < 120_000
    assert all(o < 0 for o in committed(env["bootstrap"], env["topic"], env["group"], 2).values())

    rerun = subprocess.run(_cli(env, start, end), env=_cli_env(env), cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    # The CLI indexes the default bars and gaps topics too (whatever they hold): count this topic's records.
    quotes = summary["topics"][env["topic"]]
    assert summary["command"] == "index" and quotes["read"] == quotes["indexed"] == 120_000
    assert es_count(env["es"], env["prefix"]) == 120_000
    ends = {}
    for p, o, _, _ in delivered:
        ends[p] = max(ends.get(p, 0), o + 1)
    assert committed(env["bootstrap"], env["topic"], env["group"], 2) == ends


def test_elasticsearch_stopped_mid_window_fails_after_budget_commits_nothing_then_rerun_is_exact(env) -> None:
    start = datetime.now(UTC)
    time.sleep(0.05)
    total = 60_000
    delivered = produce(env["bootstrap"], env["topic"], [quote_value(i) for i in range(total)])
    time.sleep(0.05)
    end = datetime.now(UTC)
    ranges = [r for group in plan_window(env["cfg"], start, end, topic=env["topic"]) for r in group]
    outcome: list[BaseException | IndexSummary] = []

    def run() -> None:
        try:  # small chunks, one in flight: the window is still running when Elasticsearch goes down
            outcome.append(
                index_ranges(
                    env["cfg"],
                    env["es"],
                    ranges,
                    chunk_docs=200,
                    in_flight=1,
                    commit=True,
                    retry=RetryPolicy(0.2, 2.0, budget_s=8),
                    dlq_topic=env["dlq"],
                    index_prefix=env["prefix"],
                    group_id=env["group"],
                )  # fmt: skip
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread to assert on
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while _count_or_zero(env["es"], env["prefix"]) == 0:
            assert worker.is_alive(), f"the window ended before Elasticsearch could be stopped: {outcome}"
            assert time.monotonic() < deadline, "nothing indexed within 60 s"
            time.sleep(0.05)
        stop_service("elasticsearch")
        worker.join(120)
        assert not worker.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], ElasticsearchUnavailable), outcome
        assert "retry budget" in str(outcome[0])
        assert all(o < 0 for o in committed(env["bootstrap"], env["topic"], env["group"], 2).values())
        assert dead_letters(env["bootstrap"], env["dlq"]) == []  # an outage is not the records' fault
    finally:
        worker.join(120)
        if not service_is_up("elasticsearch"):
            start_service("elasticsearch")
    assert 0 < es_count(env["es"], env["prefix"]) < total
    summary = index_window(env["cfg"], env["es"], start, end, **_kw(env))
    assert (summary.read, summary.indexed, summary.dead_lettered) == (total, total, 0)
    assert es_count(env["es"], env["prefix"]) == total
    docs = es_sources(env["es"], env["prefix"])  # the first 10,000: values as produced
    want = expected_docs(env["topic"], delivered)
    assert docs and all(want[i] == (d["symbol"], d["price"]) for i, d in docs.items())
    ends: dict[int, int] = {}
    for p, o, _, _ in delivered:
        ends[p] = max(ends.get(p, 0), o + 1)
    assert committed(env["bootstrap"], env["topic"], env["group"], 2) == ends


class _Rejecting429Proxy:
    """A loopback proxy to Elasticsearch that answers 429 for a share of bulk items and of whole bulk requests."""

    def __init__(self, upstream: str, item_share: float, request_share: float, seed: int = 7) -> None:
        self.upstream = upstream.rstrip("/")
        self.rng = random.Random(seed)
        self.item_share, self.request_share = item_share, request_share
        self.rejected_items = self.rejected_requests = self.bulk_requests = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self, body: bytes) -> tuple[int, bytes]:
                request = urllib.request.Request(self.upstream_url, data=body or None, method=self.command)
                for name in ("Content-Type", "Accept"):
                    if self.headers.get(name):
                        request.add_header(name, self.headers[name])
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        return response.status, response.read()
                except urllib.error.HTTPError as exc:
                    return exc.code, exc.read()

            def _serve(self) -> None:
                self.upstream_url = proxy.upstream + self.path
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.split("?")[0].endswith("/_bulk"):
                    status, payload = proxy.bulk(self, body)
                else:
                    status, payload = self._forward(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Elastic-Product", "Elasticsearch")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _serve

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bulk(self, handler, body: bytes) -> tuple[int, bytes]:
        with self.lock:
            self.bulk_requests += 1
            reject_whole = self.request_share > 0 and (self.bulk_requests - 1) % round(1 / self.request_share) == 0
        if reject_whole:  # deterministic: the first bulk request, then every 1/share-th one
            self.rejected_requests += 1
            error = {"error": {"type": "es_rejected_execution_exception", "reason": "proxy: queue full"}, "status": 429}
            return 429, json.dumps(error).encode()
        lines = body.splitlines()
        pairs = [(lines[i], lines[i + 1]) for i in range(0, len(lines), 2)]
        keep = [self.rng.random() >= self.item_share for _ in pairs]
        forwarded = b"".join(a + b"\n" + s + b"\n" for (a, s), k in zip(pairs, keep, strict=True) if k)
        items = []
        if forwarded:
            status, payload = handler._forward(forwarded)
            if status != 200:
                return status, payload
            items = json.loads(payload).get("items", [])
        passed = iter(items)
        merged = []
        for keep_it in keep:
            if keep_it:
                merged.append(next(passed, {"index": {"status": 201}}))
            else:
                self.rejected_items += 1
                merged.append(
                    {"index": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "proxy"}}}
                )
        return 200, json.dumps({"errors": True, "items": merged}).encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_429s_for_items_and_requests_are_retried_counted_and_exact(env) -> None:
    proxy = _Rejecting429Proxy(env["es_url"], item_share=0.3, request_share=0.2)
    try:
        start = datetime.now(UTC)
        time.sleep(0.05)
        delivered = produce(env["bootstrap"], env["topic"], [quote_value(i) for i in range(4000)])
        time.sleep(0.05)
        es = Elasticsearch(proxy.url, request_timeout=60)
        summary = index_window(
            env["cfg"], es, start, datetime.now(UTC), retry=RetryPolicy(0.01, 0.2, budget_s=60), **_kw(env)
        )
    finally:
        proxy.close()
    assert proxy.rejected_items > 500 and proxy.rejected_requests >= 1
    assert summary.retries >= proxy.rejected_items
    assert (summary.read, summary.indexed, summary.dead_lettered) == (4000, 4000, 0)
    docs = es_sources(env["es"], env["prefix"])
    assert {i: (d["symbol"], d["price"]) for i, d in docs.items()} == expected_docs(env["topic"], delivered)
