"""A/B: the producer's and the indexer's throughput, this checkout's library against another commit's.

Check the other commit out in a worktree (``git worktree add /tmp/quoteflow-old <commit>``), then run
``.venv/bin/python bench/_ab.py --old /tmp/quoteflow-old``. Each round runs both sides back to back,
and which side goes first alternates, so drift on the shared machine lands on both:

- **producer**: ``bench/producer.py``'s ``produce`` run (500 symbols, 50 packets/message, feed at
  full speed), the ``produce`` process importing the side's library; the feed is this checkout's.
- **indexer**: ``bench/indexer.py --index-only`` over one preloaded topic, each run into a fresh index
  that is deleted after it, the process importing the side's library.
- **hot paths**: ``bench/_hotpaths.py`` (CPU time of the client's message handling and of
  ``bulk_lines``, no I/O), ``HOT_ROUNDS`` rounds: on a machine that other work is loading, the
  wall-clock figures above swing by more than 5 %, CPU time far less.

Medians with min–max, and new/old ratios of the medians, go to bench/results.json (``redesign_ab``).
``BENCH_QUICK=1`` makes the runs shorter (5 s producer runs, 100,000 indexer records).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import indexer as indexer_bench  # noqa: E402
import producer as producer_bench  # noqa: E402
from _results import RESULTS, write_section  # noqa: E402

ROUNDS = 3
HOT_ROUNDS = int(os.environ.get("BENCH_HOT_ROUNDS", "7"))


def _commit(tree: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def _index_once(src: Path, topic: str) -> float:
    """One ``bench/indexer.py --index-only`` run importing the library in ``src``; its docs/s."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(ROOT)])}
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "indexer.py"), "--index-only", "--topic", topic],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"indexer run on {src} failed: {out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["docs_per_s"])


def _hot_once(src: Path) -> dict[str, float]:
    """One ``bench/_hotpaths.py`` run importing the library in ``src``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(ROOT)])}
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "_hotpaths.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"hot-path run on {src} failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="a worktree of the commit to compare against")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--records", type=int, default=100_000 if indexer_bench.QUICK else 500_000)
    parser.add_argument("--hot-only", action="store_true", help="only the CPU-time hot-path rounds")
    args = parser.parse_args()
    sides = {"old": args.old.resolve() / "include", "new": ROOT / "include"}
    if not (sides["old"] / "quoteflow").is_dir():
        parser.error(f"{args.old} holds no include/quoteflow: give a worktree of the old commit")
    rates: dict[str, dict[str, list[float]]] = {
        "producer_quotes_per_s": {"old": [], "new": []},
        "indexer_docs_per_s": {"old": [], "new": []},
        "client_cpu_us_per_quote": {"old": [], "new": []},
        "indexer_cpu_us_per_record": {"old": [], "new": []},
    }
    for round_no in range(HOT_ROUNDS):
        for side in ("old", "new") if round_no % 2 == 0 else ("new", "old"):
            hot = _hot_once(sides[side])
            rates["client_cpu_us_per_quote"][side].append(hot["client_us_per_quote"])
            rates["indexer_cpu_us_per_record"][side].append(hot["indexer_us_per_record"])
            print(f"hot paths round {round_no + 1} {side}: {hot}", flush=True)

    from confluent_kafka.admin import AdminClient

    from quoteflow.tradingview.feed_server import synthetic_universe

    admin = AdminClient({"bootstrap.servers": producer_bench.BOOTSTRAP})
    symbols = synthetic_universe(producer_bench.SYMBOL_COUNT)
    for round_no in range(0 if args.hot_only else args.rounds):
        for side in ("old", "new") if round_no % 2 == 0 else ("new", "old"):
            run = producer_bench.run_quoteflow(admin, symbols, packets_per_message=50, src=sides[side])
            rates["producer_quotes_per_s"][side].append(run["quotes_per_s"])
            print(f"producer round {round_no + 1} {side}: {run['quotes_per_s']:,.0f} quotes/s", flush=True)

    topic = f"bench.ab.{uuid.uuid4().hex[:8]}"
    indexer_rounds = 0 if args.hot_only else args.rounds
    indexer_bench.ensure_template(indexer_bench.Elasticsearch(indexer_bench.ES_URL, request_timeout=120))
    indexer_bench.ensure_topic(admin, indexer_bench.quotes_topic_spec(topic, indexer_bench.PARTITIONS, 6 * 3600_000))
    try:
        if indexer_rounds:
            indexer_bench.preload(topic, args.records)
        for round_no in range(indexer_rounds):
            for side in ("old", "new") if round_no % 2 == 0 else ("new", "old"):
                rate = _index_once(sides[side], topic)
                rates["indexer_docs_per_s"][side].append(rate)
                print(f"indexer round {round_no + 1} {side}: {rate:,.0f} docs/s", flush=True)
    finally:
        admin.delete_topics([topic, f"{topic}.dlq"], operation_timeout=30)

    figures: dict[str, object] = {
        "old_commit": _commit(args.old),
        "new_commit": _commit(ROOT),
        "rounds": args.rounds,
        "quick": indexer_bench.QUICK,
        "indexer_records": args.records,
        "notes": (
            "alternating old/new in one run (the first side alternates per round); medians with min-max; "
            "ratio = new median / old median; paired = median (min-max) of each round's new/old; for the "
            "*_cpu_us_* figures lower is faster; the new side ran with the working tree of new_commit"
        ),
    }
    for name, by_side in rates.items():
        if not by_side["old"]:
            continue
        old, new = median(by_side["old"]), median(by_side["new"])
        # Each round's two runs are neighbours in time: their ratio cancels the drift between rounds.
        paired = [n / o for n, o in zip(by_side["new"], by_side["old"], strict=True)]
        figures[name] = {
            "old": _spread(by_side["old"]),
            "new": _spread(by_side["new"]),
            "runs": by_side,
            "ratio_new_to_old": round(new / old, 3),
            "paired_ratio_new_to_old": _spread(paired),
        }
    if args.hot_only:  # keep the wall-clock figures of the last full run beside the new hot-path ones
        previous = json.loads(RESULTS.read_text()).get("redesign_ab", {}) if RESULTS.exists() else {}
        kept = {k: v for k, v in previous.items() if k in ("producer_quotes_per_s", "indexer_docs_per_s", "rounds")}
        for entry in kept.values():
            if isinstance(entry, dict) and "runs" in entry:
                runs = entry["runs"]
                entry["paired_ratio_new_to_old"] = _spread(
                    [n / o for n, o in zip(runs["new"], runs["old"], strict=True)]
                )
        figures = {**kept, **figures, "hot_only_rerun": True, "wall_clock_from_commit": previous.get("new_commit")}
    write_section("redesign_ab", figures)
    print(json.dumps({k: v for k, v in figures.items() if k != "notes"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
