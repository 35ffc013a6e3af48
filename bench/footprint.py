"""Footprint: PSS of `make run` per component, with today's sizes and with Airflow's old defaults.

Each phase starts `scripts/run --source replay` (the default symbols: the synthetic feed's 3 at 20
updates/s) in its own run folder on its own ports (``BENCH_AIRFLOW_PORT`` 46080, ``BENCH_FEED_PORT``
46765, ``BENCH_HEALTH_PORT`` 46974), waits ``FOOTPRINT_WARMUP`` s (default 120: the producer streams
and indexer windows run), then reads PSS (``/proc/<pid>/smaps_rollup``) of every process
``FOOTPRINT_SAMPLES`` times (default 3, 15 s apart) and keeps each component's median; then stops it.

Phases: ``before`` = Airflow's defaults as `make run` had them (``[core] parallelism`` 32, two DAG
parsing processes, the indexer's plan → 2 mapped groups → finish), set through the environment,
which scripts/run's sizes yield to; ``after`` = `make run` as it is now. Components: Kafka and
Elasticsearch (``scripts/services``; shared by every run on this machine, measured as they are), the
feed server, each Airflow component's own process, the LocalExecutor workers (the scheduler's
children), the task processes (the workers' descendants: the producer's long task, indexer windows),
and each component's other descendants. Figures go to bench/results.json under "footprint".

Other benches import :class:`PipelineRun`, :func:`process_tree` and :func:`cpu_ticks` from here.
Run under ``flock /tmp/quoteflow-e2e.lock`` (it starts Airflow). Linux only; standard library.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import procs  # noqa: E402

from bench._results import write_section  # noqa: E402

AIRFLOW_PORT = os.environ.get("BENCH_AIRFLOW_PORT", "46080")
FEED_PORT = os.environ.get("BENCH_FEED_PORT", "46765")
HEALTH_PORT = os.environ.get("BENCH_HEALTH_PORT", "46974")
WARMUP = float(os.environ.get("FOOTPRINT_WARMUP", "120"))
SAMPLES = int(os.environ.get("FOOTPRINT_SAMPLES", "3"))
AIRFLOW_COMPONENTS = ("api-server", "dag-processor", "triggerer", "scheduler")
TARGET_TOTAL_MB = 2500
# What `make run` ran with before it sized Airflow: Airflow's defaults, and the indexer's mapped layout.
OLD_SETTINGS = {
    "AIRFLOW__CORE__PARALLELISM": "32",
    "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "2",
    "AIRFLOW__API__WORKERS": "1",
    "QUOTEFLOW_PARTITION_GROUPS": "2",
    "QUOTEFLOW_WINDOW_SECONDS": "30",
}
# The heaps make run's Kafka and Elasticsearch had: scripts/services' defaults.
OLD_HEAPS = {"QUOTEFLOW_KAFKA_HEAP": "512m", "QUOTEFLOW_ES_HEAP": "1g"}
TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- processes


def private_services(label: str) -> dict[str, str]:
    """The environment of a Kafka and an Elasticsearch of the bench's own (state folder, ports), as a fresh clone's."""
    state = ROOT / ".state" / f"bench-{label}"
    return {
        "QUOTEFLOW_STATE_DIR": str(state),
        "QUOTEFLOW_KAFKA_PORT": os.environ.get("BENCH_KAFKA_PORT", "46092"),
        "QUOTEFLOW_KAFKA_CONTROLLER_PORT": os.environ.get("BENCH_KAFKA_CONTROLLER_PORT", "46093"),
        "QUOTEFLOW_ES_PORT": os.environ.get("BENCH_ES_PORT", "46920"),
        "QUOTEFLOW_ES_TRANSPORT_PORT": os.environ.get("BENCH_ES_TRANSPORT_PORT", "46930"),
    }


def services(action: str, env: Mapping[str, str]) -> None:
    """``scripts/services <action>`` for both services of ``env`` (never the shared ones: its ports are the bench's)."""
    assert env["QUOTEFLOW_ES_PORT"] != "9200" and env["QUOTEFLOW_KAFKA_PORT"] != "9092"
    subprocess.run([str(ROOT / "scripts/services"), action], env={**os.environ, **env}, check=action == "up")


def service_pid(service: str, env: Mapping[str, str] | None = None) -> int | None:
    """The PID ``scripts/services status`` reports for ``service`` (kafka, elasticsearch), if it is up."""
    out = subprocess.run(
        [str(ROOT / "scripts/services"), "status", service],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    ).stdout
    found = re.search(r"\(pid (\d+)\)", out)
    return int(found.group(1)) if found else None


def process_tree(run_dir: Path, env: Mapping[str, str] | None = None) -> dict[str, list[int]]:
    """Every process of a run, by component (see the module's docstring); each PID in exactly one."""
    tree: dict[str, list[int]] = {}
    for service in ("kafka", "elasticsearch"):
        pid = service_pid(service, env)
        if pid:
            tree[service] = [pid, *procs.descendants(pid)]
    feed = procs.read_pid_file(run_dir / "feed.pid")
    if feed:
        tree["feed"] = [feed, *procs.descendants(feed)]
    children = procs.children_map()
    for name in AIRFLOW_COMPONENTS:
        pid = procs.read_pid_file(run_dir / f"{name}.pid")
        if not pid:
            continue
        tree[name] = [pid]
        if name == "scheduler":
            workers = children.get(pid, [])
            tree["executor-workers"] = list(workers)
            tree["task-processes"] = [d for w in workers for d in procs.descendants(w)]
        elif children.get(pid):
            tree[f"{name}-children"] = procs.descendants(pid)
    return tree


def pss_kb(pid: int) -> int:
    """Proportional set size of one process (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    found = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(found.group(1)) if found else 0


def cpu_ticks(pids: list[int]) -> int:
    """CPU clock ticks used so far by these processes and their reaped children (utime+stime+cutime+cstime)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += sum(int(f) for f in fields[11:15])  # stat fields 14-17, after pid and (comm)
    return total


def pss_by_component(run_dir: Path, env: Mapping[str, str] | None = None) -> dict[str, dict[str, float]]:
    """``{component: {"mb": PSS, "processes": n}}`` right now."""
    return {
        name: {"mb": round(sum(pss_kb(p) for p in pids) / 1024, 1), "processes": len(pids)}
        for name, pids in process_tree(run_dir, env).items()
    }


# ---------------------------------------------------------------- one `make run`


class PipelineRun:
    """`scripts/run --source replay` in a fresh run folder on the bench's ports, ``settings`` in its environment."""

    def __init__(self, label: str, settings: Mapping[str, str]) -> None:
        self.label = label
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"quoteflow-bench-{label}-"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
        self.env.pop("AIRFLOW_HOME", None)
        self.env.update(
            QUOTEFLOW_RUN_DIR=str(self.run_dir),
            QUOTEFLOW_AIRFLOW_PORT=AIRFLOW_PORT,
            QUOTEFLOW_FEED_PORT=FEED_PORT,
            QUOTEFLOW_SCHEDULER_HEALTH_PORT=HEALTH_PORT,
            **settings,
        )
        self.started_at = 0.0
        self._token: str | None = None

    def __enter__(self) -> PipelineRun:
        print(f"bench [{self.label}]: starting scripts/run in {self.run_dir}", flush=True)
        started = time.monotonic()
        try:
            subprocess.run([str(ROOT / "scripts/run"), "--source", "replay"], env=self.env, check=True)
        except BaseException:
            self.stop()
            raise
        self.started_at = time.time()
        print(f"bench [{self.label}]: up after {time.monotonic() - started:.0f} s", flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        subprocess.run([str(ROOT / "scripts/run"), "--stop"], env=self.env, check=False)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def api(self, path: str) -> dict:
        """GET from this run's Airflow REST API, as admin."""
        base = f"http://127.0.0.1:{AIRFLOW_PORT}"
        if self._token is None:
            password = (self.run_dir / "admin-password").read_text().strip()
            req = urllib.request.Request(
                f"{base}/auth/token",
                data=json.dumps({"username": "admin", "password": password}).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                self._token = json.loads(resp.read())["access_token"]
        req = urllib.request.Request(f"{base}{path}", headers={"Authorization": f"Bearer {self._token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def pids(self) -> dict[str, list[int]]:
        return process_tree(self.run_dir, self.env)


def epoch(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


def run_breakdown(run: PipelineRun, since: float) -> dict[str, Any]:
    """Medians (with min-max) of where the phase's finished indexer runs spent their seconds."""
    runs = run.api("/api/v2/dags/quotes_indexer/dagRuns?state=success&order_by=-run_after&limit=100")["dag_runs"]
    runs = [r for r in runs if (epoch(r["data_interval_end"]) or 0) >= since]
    tis = run.api("/api/v2/dags/quotes_indexer/dagRuns/~/taskInstances?limit=100&order_by=-start_date")[
        "task_instances"
    ]
    by_run: dict[str, list[dict]] = {}
    for ti in tis:
        by_run.setdefault(ti["dag_run_id"], []).append(ti)
    parts: dict[str, list[float]] = {}

    def add(name: str, value: float | None) -> None:
        if value is not None:
            parts.setdefault(name, []).append(value)

    for r in runs:
        window_end, run_end = epoch(r["data_interval_end"]), epoch(r["end_date"])
        steps = sorted(by_run.get(r["dag_run_id"], []), key=lambda t: epoch(t["start_date"]) or 0)
        if not steps or window_end is None or run_end is None:
            continue
        queued = [epoch(t["queued_when"]) for t in steps]
        add("scheduling (window end -> first task queued)", (queued[0] or window_end) - window_end)
        previous_end = None
        for ti, q in zip(steps, queued, strict=True):
            start, end = epoch(ti["start_date"]), epoch(ti["end_date"])
            if start is None or end is None:
                continue
            task = ti["task_id"] + ("[*]" if ti["map_index"] >= 0 else "")
            if previous_end is not None and q is not None:
                add(f"{task}: previous task end -> queued", q - previous_end)
            add(f"{task}: queued -> started (executor, task start)", start - q if q else None)
            add(f"{task}: started -> ended", end - start)
            previous_end = end if previous_end is None else max(previous_end, end)
        add("last task end -> run end", run_end - (previous_end or run_end))
        add("window end -> run end (total)", run_end - window_end)
        add("task processes per run", float(len(steps)))
    return {
        "runs": len(runs),
        "seconds": {
            name: {
                "median": round(statistics.median(v), 2),
                "min": round(min(v), 2),
                "max": round(max(v), 2),
            }
            for name, v in parts.items()
        },
    }


# ---------------------------------------------------------------- the bench


def measure_phase(label: str, settings: Mapping[str, str]) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """PSS per component (medians of the samples), and where the phase's indexer runs spent their seconds."""
    with PipelineRun(label, settings) as run:
        print(f"bench [{label}]: warming up {WARMUP:.0f} s", flush=True)
        since = time.time() + 30  # past the first catch-up windows
        time.sleep(WARMUP)
        samples = []
        for i in range(SAMPLES):
            if i:
                time.sleep(15)
            samples.append(pss_by_component(run.run_dir, run.env))
        breakdown = run_breakdown(run, since)
    names = sorted({n for s in samples for n in s})
    out = {
        n: {
            "mb": round(statistics.median(s.get(n, {"mb": 0.0})["mb"] for s in samples), 1),
            "processes": max(int(s.get(n, {"processes": 0})["processes"]) for s in samples),
        }
        for n in names
    }
    total = round(sum(v["mb"] for v in out.values()), 1)
    print(f"bench [{label}]: total {total} MB PSS: {json.dumps(out)}", flush=True)
    return out, breakdown


def main() -> int:
    # Each phase on a Kafka and an Elasticsearch that scripts/run starts (and stops) itself, as on a fresh
    # clone: "before" with the heaps scripts/services gives by default, "after" with make run's own.
    phases = {
        "before": {**OLD_SETTINGS, **OLD_HEAPS, **private_services("footprint-before")},
        "after": private_services("footprint-after"),
    }
    try:
        measured = {label: measure_phase(label, settings) for label, settings in phases.items()}
    finally:
        for settings in phases.values():
            shutil.rmtree(settings["QUOTEFLOW_STATE_DIR"], ignore_errors=True)
    results = {label: pss for label, (pss, _) in measured.items()}
    totals = {label: round(sum(v["mb"] for v in r.values()), 1) for label, r in results.items()}
    shared = ("kafka", "elasticsearch")
    figures = {
        "pss_mb": results,
        "total_mb": totals,
        "total_mb_without_kafka_es": {
            label: round(sum(v["mb"] for n, v in r.items() if n not in shared), 1) for label, r in results.items()
        },
        "settings": {
            "before": {**OLD_SETTINGS, **OLD_HEAPS},
            "after": "scripts/run's FOOTPRINT and SERVICE_HEAPS, the DAG's defaults",
        },
        "target_total_mb": TARGET_TOTAL_MB,
        "after_within_target": totals["after"] <= TARGET_TOTAL_MB,
        "indexer_run_overhead": {label: breakdown for label, (_, breakdown) in measured.items()},
        "warmup_s": WARMUP,
        "samples": SAMPLES,
        "notes": "median of samples per component; each phase's own Kafka and ES, started by scripts/run",
    }
    write_section("footprint", figures)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
