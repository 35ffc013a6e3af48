"""Freshness: how long after a quote's ``received_at`` it becomes searchable in Elasticsearch.

Needs the pipeline running (`make run SOURCE=replay`); if no `make run` is up, this starts one
in its own run folder on spare ports and stops it afterwards. Polls Elasticsearch every
``FRESHNESS_POLL`` seconds (default 1) for documents newer than the last seen one; each new
document's freshness is (time first seen) − ``received_at``, so figures carry up to one poll of
over-estimate. Runs ``FRESHNESS_MINUTES`` (default 10) and writes p50/p95/max to
bench/results.json under "freshness", with the 30 s schedule's bound (one window + one task
start) as the baseline the figures are judged against.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._results import write_section

ROOT = Path(__file__).resolve().parent.parent
ES_URL = f"http://127.0.0.1:{os.environ.get('QUOTEFLOW_ES_PORT', '9200')}"
MINUTES = float(os.environ.get("FRESHNESS_MINUTES", "10"))
POLL = float(os.environ.get("FRESHNESS_POLL", "1"))
WARMUP = float(os.environ.get("FRESHNESS_WARMUP", "60"))
SCHEDULE_SECONDS = 30
TARGET_P95 = 45.0


def airflow_running(port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=3):
            return True
    except (OSError, urllib.error.URLError):
        return False


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(es) -> list[float]:
    """Poll for new documents for MINUTES; return one freshness sample (seconds) per new document."""
    from elasticsearch import ConnectionError

    samples: list[float] = []
    newest = datetime.now().astimezone().isoformat()
    deadline = time.monotonic() + MINUTES * 60
    while time.monotonic() < deadline:
        try:
            resp = es.search(
                index="quotes-tradingview-*",
                size=10_000,
                query={"range": {"received_at": {"gt": newest}}},
                sort=[{"received_at": "asc"}],
                source=["received_at"],
                ignore_unavailable=True,
            )
        except ConnectionError as exc:  # a restarting node costs samples, not the whole measurement
            print(f"freshness: Elasticsearch unreachable ({exc}); retrying", file=sys.stderr)
            time.sleep(POLL)
            continue
        seen_at = time.time()
        for hit in resp["hits"]["hits"]:
            received = datetime.fromisoformat(hit["_source"]["received_at"].replace("Z", "+00:00")).timestamp()
            samples.append(seen_at - received)
            newest = hit["_source"]["received_at"]
        time.sleep(POLL)
    return samples


def main() -> int:
    from elasticsearch import Elasticsearch

    port = os.environ.get("QUOTEFLOW_AIRFLOW_PORT", "8080")
    own_run = None
    env = dict(os.environ)
    if not airflow_running(port):
        own_run = Path(tempfile.mkdtemp(prefix="quoteflow-freshness-"))
        port = "28180"
        env.update(QUOTEFLOW_RUN_DIR=str(own_run), QUOTEFLOW_AIRFLOW_PORT=port, QUOTEFLOW_FEED_PORT="28865")
        for key in [k for k in env if k.startswith(("AIRFLOW__", "AIRFLOW_CONN_")) or k == "AIRFLOW_HOME"]:
            env.pop(key)
        print(f"freshness: starting make run SOURCE=replay in {own_run}", flush=True)
        subprocess.run(["make", "run", "SOURCE=replay"], cwd=ROOT, env=env, check=True)
        time.sleep(WARMUP)
    try:
        es = Elasticsearch(ES_URL, request_timeout=30)
        print(f"freshness: sampling for {MINUTES:g} min", flush=True)
        samples = measure(es)
    finally:
        if own_run is not None:
            subprocess.run(["make", "stop"], cwd=ROOT, env=env, check=False)
    if not samples:
        print("freshness: no new documents were indexed while sampling", file=sys.stderr)
        return 1
    figures = {
        "documents_sampled": len(samples),
        "minutes": MINUTES,
        "poll_seconds": POLL,
        "p50_seconds": round(statistics.median(samples), 2),
        "p95_seconds": round(percentile(samples, 0.95), 2),
        "max_seconds": round(max(samples), 2),
        "baseline_schedule_bound_seconds": SCHEDULE_SECONDS,
        "target_p95_seconds": TARGET_P95,
        "p95_within_target": percentile(samples, 0.95) <= TARGET_P95,
    }
    write_section("freshness", figures)
    print(f"freshness: {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
