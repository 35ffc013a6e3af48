"""Freshness and its price: ``received_at`` → searchable, and the pipeline's CPU, for 10 s and 30 s windows.

One bench run measures each phase in turn, each a fresh `scripts/run --source replay` (the default
symbols: the synthetic feed's 3 at 20 updates/s) in its own run folder on the bench's ports
(bench/footprint.py's ``PipelineRun``), with ``QUOTEFLOW_WINDOW_SECONDS`` set for it:

* freshness: every ``FRESHNESS_POLL`` s (default 1) Elasticsearch is asked for documents newer than
  the last seen; each new document's freshness is (time first seen) − ``received_at``, so figures
  carry up to one poll of over-estimate; p50, p95, max over ``FRESHNESS_MINUTES`` (default 5) after
  ``FRESHNESS_WARMUP`` s (default 60);
* CPU seconds per minute over the same minutes, of every process of the run: Kafka and
  Elasticsearch (the bench's own, on its own ports, with make run's heaps; also given apart), the feed
  server, the four Airflow components, the LocalExecutor workers and the task processes (the
  producer's long task, each indexer window's task: counted through their parents' cutime);
* where a run's seconds go, from the task instances' queued/start/end times of the phase's indexer
  runs (Airflow's REST API): window end → first task queued (scheduling), queued → started (executor
  and task process start), started → ended per task (plan, index, finish, or index_window doing all
  three), the gaps between tasks, and window end → run end.

Phases (``FRESHNESS_PHASES``, default ``30,10,10,30``: alternating rounds, reported as medians with
min-max per window): a number is that window with today's settings;
``before`` is the layout and sizes `make run` had (30 s, plan → 2 mapped index_group → finish,
parallelism 32), for the overhead breakdown's "before". Figures go to bench/results.json under
"freshness". Run under ``flock /tmp/quoteflow-e2e.lock`` (it starts Airflow).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._results import write_section  # noqa: E402
from bench.footprint import (  # noqa: E402
    OLD_SETTINGS,
    TICKS,
    PipelineRun,
    cpu_ticks,
    epoch,
    private_services,
    run_breakdown,
    services,
)

# Every phase runs on one Kafka and Elasticsearch of the bench's own, with the heaps make run gives the
# services it starts (scripts/run's SERVICE_HEAPS): their CPU is then this pipeline's alone.
SERVICES = {**private_services("freshness"), "QUOTEFLOW_KAFKA_HEAP": "256m", "QUOTEFLOW_ES_HEAP": "512m"}
ES_URL = f"http://127.0.0.1:{SERVICES['QUOTEFLOW_ES_PORT']}"
MINUTES = float(os.environ.get("FRESHNESS_MINUTES", "5"))
POLL = float(os.environ.get("FRESHNESS_POLL", "1"))
WARMUP = float(os.environ.get("FRESHNESS_WARMUP", "60"))
PHASES = [p.strip() for p in os.environ.get("FRESHNESS_PHASES", "30,10,10,30").split(",") if p.strip()]
SHARED = ("kafka", "elasticsearch")
GOALS = {"p95_seconds_at_10s": 15.0, "cpu_ratio_10s_to_30s": 1.5}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _cpu(run: PipelineRun) -> dict[str, int]:
    return {name: cpu_ticks(pids) for name, pids in run.pids().items()}


def measure(es, run: PipelineRun) -> tuple[list[float], dict[str, float], float]:
    """Poll for new documents for MINUTES; (freshness samples, CPU s/min per component, seconds measured)."""
    from elasticsearch import ConnectionError

    samples: list[float] = []
    newest = datetime.now().astimezone().isoformat()
    cpu_before, started = _cpu(run), time.monotonic()
    deadline = started + MINUTES * 60
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
            received = epoch(hit["_source"]["received_at"])
            assert received is not None
            samples.append(seen_at - received)
            newest = hit["_source"]["received_at"]
        time.sleep(POLL)
    cpu_after, seconds = _cpu(run), time.monotonic() - started
    per_minute = {
        name: round((ticks - cpu_before.get(name, 0)) / TICKS / seconds * 60, 2) for name, ticks in cpu_after.items()
    }
    return samples, per_minute, seconds


def phase(label: str) -> dict[str, Any]:
    from elasticsearch import Elasticsearch

    settings = dict(OLD_SETTINGS) if label == "before" else {"QUOTEFLOW_WINDOW_SECONDS": label}
    with PipelineRun(f"freshness-{label}", {**SERVICES, **settings}) as run:
        print(f"freshness [{label}]: warming up {WARMUP:.0f} s", flush=True)
        time.sleep(WARMUP)
        since = time.time()
        es = Elasticsearch(ES_URL, request_timeout=30)
        print(f"freshness [{label}]: sampling for {MINUTES:g} min", flush=True)
        samples, cpu, seconds = measure(es, run)
        breakdown = run_breakdown(run, since)
    if not samples:
        raise RuntimeError(f"phase {label}: no new documents were indexed while sampling")
    figures = {
        "window_seconds": int(settings["QUOTEFLOW_WINDOW_SECONDS"]),
        "settings": settings,
        "documents_sampled": len(samples),
        "seconds_measured": round(seconds, 1),
        "p50_seconds": round(statistics.median(samples), 2),
        "p95_seconds": round(percentile(samples, 0.95), 2),
        "max_seconds": round(max(samples), 2),
        "cpu_seconds_per_minute": {
            "total": round(sum(cpu.values()), 2),
            "without_kafka_es": round(sum(v for k, v in cpu.items() if k not in SHARED), 2),
            "by_component": cpu,
        },
        "run_overhead": breakdown,
    }
    print(f"freshness [{label}]: {figures}", flush=True)
    return figures


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One window's rounds: medians with min-max of the headline figures, and every round in full."""
    cpu = [r["cpu_seconds_per_minute"] for r in rounds]
    return {
        "rounds": len(rounds),
        "p50_seconds": spread([r["p50_seconds"] for r in rounds]),
        "p95_seconds": spread([r["p95_seconds"] for r in rounds]),
        "max_seconds": spread([r["max_seconds"] for r in rounds]),
        "cpu_seconds_per_minute": spread([c["total"] for c in cpu]),
        "cpu_seconds_per_minute_without_kafka_es": spread([c["without_kafka_es"] for c in cpu]),
        "round_figures": rounds,
    }


def main() -> int:
    rounds: dict[str, list[dict[str, Any]]] = {}
    services("up", SERVICES)
    try:
        for label in PHASES:  # e.g. 30,10,10,30: alternating, so drift over the run touches both windows
            rounds.setdefault(label, []).append(phase(label))
    finally:
        services("down", SERVICES)
        shutil.rmtree(SERVICES["QUOTEFLOW_STATE_DIR"], ignore_errors=True)
    results = {label: summarise(r) for label, r in rounds.items()}
    figures: dict[str, Any] = {
        "phases": results,
        "order": PHASES,
        "minutes": MINUTES,
        "poll_seconds": POLL,
        "warmup_seconds": WARMUP,
        "goals": GOALS,
    }
    if "10" in results and "30" in results:
        ten, thirty = results["10"], results["30"]
        ratio = ten["cpu_seconds_per_minute"]["median"] / thirty["cpu_seconds_per_minute"]["median"]
        own = (
            ten["cpu_seconds_per_minute_without_kafka_es"]["median"]
            / thirty["cpu_seconds_per_minute_without_kafka_es"]["median"]
        )
        figures["cpu_ratio_10s_to_30s"] = round(ratio, 3)
        figures["cpu_ratio_10s_to_30s_without_kafka_es"] = round(own, 3)
        figures["p95_at_10s_within_goal"] = ten["p95_seconds"]["median"] <= GOALS["p95_seconds_at_10s"]
        figures["cpu_within_goal"] = ratio <= GOALS["cpu_ratio_10s_to_30s"]
    write_section("freshness", figures)
    print(f"freshness: {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
