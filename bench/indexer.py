"""Indexer throughput against the ceiling and the seed's way, on the local Kafka and Elasticsearch.

1. Preload N quotes (default 500,000) into a fresh LogAppendTime topic.
2. **indexer**: ``index_ranges`` — the indexer's own code: Kafka read, validation, documents, chunked
   bulk with retries, DLQ accounting — over every offset of the topic.
3. **ceiling**: the same documents pre-built as NDJSON (building is not timed), sent straight to
   ``_bulk`` with the same chunk size, the same number of requests in flight and the same index
   template settings.
4. **seed**: one ``PUT /<index>/_doc/<id>`` per document on a sample, extrapolated to docs/s.

Indexer and ceiling alternate over ``BENCH_ROUNDS`` rounds (default 5; which goes first alternates
too), each run into a fresh index that is deleted after it, so no run inherits another's merges; the
figures are medians with min–max, and the ratio is also given per round (indexer / ceiling of the same
round, so drift between rounds cancels). ``BENCH_QUICK=1`` preloads 100,000 records instead of 500,000.

Run: ``.venv/bin/python bench/indexer.py [--records N]``; figures go to bench/results.json (section
``indexer``). ``--index-only --topic T`` times one indexer run over an existing topic and prints it as
JSON (``bench/_ab.py`` uses it to compare two commits' code). Needs the local services.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _results import write_section  # noqa: E402
from confluent_kafka import Consumer, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from elasticsearch import Elasticsearch  # noqa: E402

from quoteflow.elastic.bulk import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_DOCS  # noqa: E402
from quoteflow.elastic.documents import bulk_lines  # noqa: E402
from quoteflow.elastic.template import ensure_template  # noqa: E402
from quoteflow.indexer import index_ranges  # noqa: E402
from quoteflow.kafka.admin import ensure_topic, quotes_topic_spec  # noqa: E402

try:
    from quoteflow.kafka.reader import PartitionRange, read_ranges, watermarks
except ImportError:  # the code before the reader was named so (bench/_ab.py against an older commit)
    from quoteflow.kafka.ranges import PartitionRange, read_ranges, watermarks  # type: ignore[no-redef]
from quoteflow.quotes import SCHEMA_HEADER, Quote, format_timestamp  # noqa: E402

BOOTSTRAP = f"127.0.0.1:{os.environ.get('QUOTEFLOW_KAFKA_PORT', '9092')}"
ES_URL = f"http://127.0.0.1:{os.environ.get('QUOTEFLOW_ES_PORT', '9200')}"
PARTITIONS = 3
IN_FLIGHT = 2
SYMBOLS = [f"BINANCE:C{i:03d}USDT" for i in range(50)]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
QUICK = os.environ.get("BENCH_QUICK") == "1"
# A reading-only consumer, as the indexer's own reader configures one.
READER = {
    "bootstrap.servers": BOOTSTRAP,
    "group.id": "bench-indexer",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "error",
    "enable.partition.eof": False,
}


def preload(topic: str, records: int) -> float:
    """Produce ``records`` distinct quotes; return seconds taken."""
    producer = Producer(
        {"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True, "linger.ms": 20, "batch.size": 1_000_000}
    )
    received = format_timestamp(time.time(), milliseconds=True)
    started = time.perf_counter()
    for i in range(records):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        quote = Quote(
            symbol=symbol,
            exchange="BINANCE",
            ticker=symbol.split(":")[1],
            price=100.0 + (i % 10_000) / 100,
            change=0.5,
            change_percent=0.1,
            volume=float(i),
            bid=99.9,
            ask=100.1,
            currency="USDT",
            update_mode="streaming",
            received_at=received,
        )
        while True:
            try:
                producer.produce(topic, key=symbol.encode(), value=quote.to_json(), headers=[SCHEMA_HEADER])
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    remaining = producer.flush(120)
    if remaining:
        raise RuntimeError(f"{remaining} records not delivered")
    return time.perf_counter() - started


def all_ranges(topic: str) -> list[PartitionRange]:
    consumer = Consumer(READER)
    try:
        return [PartitionRange(topic, p, *watermarks(consumer, topic, p)) for p in range(PARTITIONS)]
    finally:
        consumer.close()


def prebuilt_chunks(ranges: list[PartitionRange], prefix: str) -> list[bytes]:
    """The indexer's exact NDJSON, chunked like the indexer (count and bytes), built before timing."""
    consumer = Consumer(READER)
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    try:
        for batch in read_ranges(consumer, ranges):
            for msg in batch:
                lines = bulk_lines(msg.value(), msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1], prefix)
                if current and size + len(lines) > DEFAULT_CHUNK_BYTES:
                    chunks.append(b"".join(current))
                    current, size = [], 0
                current.append(lines)
                size += len(lines)
                if len(current) >= DEFAULT_CHUNK_DOCS:
                    chunks.append(b"".join(current))
                    current, size = [], 0
    finally:
        consumer.close()
    if current:
        chunks.append(b"".join(current))
    return chunks


def send_chunks(es: Elasticsearch, chunks: list[bytes]) -> float:
    """Send pre-built chunks to _bulk, IN_FLIGHT at a time; return seconds taken."""
    client = es.options(request_timeout=120)

    def send(body: bytes) -> None:
        response = client.bulk(operations=body, filter_path="errors")
        if response.get("errors"):
            raise RuntimeError("ceiling bulk reported item errors")

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        list(pool.map(send, chunks))
    return time.perf_counter() - started


def seed_way(es: Elasticsearch, chunks: list[bytes], sample: int) -> tuple[int, float]:
    """One PUT per document for ``sample`` documents; return (docs, seconds)."""
    lines = [line for chunk in chunks[: 1 + sample // DEFAULT_CHUNK_DOCS] for line in chunk.splitlines()][: 2 * sample]
    started = time.perf_counter()
    for action, source in zip(lines[0::2], lines[1::2], strict=True):
        meta = json.loads(action)["index"]
        es.index(index=meta["_index"].replace("-ceiling-", "-seed-"), id=meta["_id"], document=json.loads(source))
    return len(lines) // 2, time.perf_counter() - started


def drop(es: Elasticsearch, pattern: str) -> None:
    """Delete the indices matching ``pattern``."""
    es.options(ignore_status=404).indices.delete(index=pattern, expand_wildcards="all")


def spread(values: list[float], digits: int = 0) -> dict[str, float]:
    """Median with min and max, as every figure here is reported."""
    return {
        "median": round(median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def run_indexer(es: Elasticsearch, ranges: list[PartitionRange], prefix: str, run: str) -> tuple[float, int]:
    """``index_ranges`` over ``ranges`` into the fresh indices ``<prefix>*``; (seconds, documents in ES)."""
    total = sum(r.size for r in ranges)
    started = time.perf_counter()
    summary = index_ranges(
        {"bootstrap.servers": BOOTSTRAP},
        es,
        ranges,
        dlq_topic=f"{ranges[0].topic}.dlq",
        index_prefix=prefix,
        group_id=f"bench-{run}",
        in_flight=IN_FLIGHT,
    )
    seconds = time.perf_counter() - started
    if summary.indexed != total:
        raise RuntimeError(f"indexer indexed {summary.indexed} of {total}")
    es.indices.refresh(index=f"{prefix}*")
    return seconds, es.count(index=f"{prefix}*")["count"]


def index_only(topic: str) -> int:
    """One indexer run over every offset of ``topic`` into a fresh index, printed as JSON, index deleted."""
    run = uuid.uuid4().hex[:8]
    prefix = f"quotes-bench-{run}-indexer-"
    es = Elasticsearch(ES_URL, request_timeout=120)
    ranges = all_ranges(topic)
    total = sum(r.size for r in ranges)
    try:
        seconds, count = run_indexer(es, ranges, prefix, run)
    finally:
        drop(es, f"{prefix}*")
    print(json.dumps({"records": total, "seconds": round(seconds, 3), "docs_per_s": round(total / seconds)}))
    return 0 if count == total else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000 if QUICK else 500_000)
    parser.add_argument("--seed-sample", type=int, default=2_000)
    parser.add_argument("--index-only", action="store_true", help="time one indexer run over --topic, print JSON")
    parser.add_argument("--topic", help="with --index-only: the preloaded topic to index")
    args = parser.parse_args()
    if args.index_only:
        if not args.topic:
            parser.error("--index-only needs --topic")
        return index_only(args.topic)

    run = uuid.uuid4().hex[:8]
    topic = f"bench.indexer.{run}"
    base = f"quotes-bench-{run}"
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    es = Elasticsearch(ES_URL, request_timeout=120)
    ensure_template(es)
    ensure_topic(admin, quotes_topic_spec(topic, PARTITIONS, 6 * 3600 * 1000))
    dlq = f"{topic}.dlq"
    try:
        produce_s = preload(topic, args.records)
        ranges = all_ranges(topic)
        total = sum(r.size for r in ranges)
        print(f"preloaded {total} quotes in {produce_s:.1f}s", flush=True)

        first = ranges[0]
        warm_range = PartitionRange(topic, 0, first.start, min(first.end, first.start + 20_000))
        warm = prebuilt_chunks([warm_range], f"{base}-warm-")
        send_chunks(es, warm)  # JIT and caches warm before anything is timed
        drop(es, f"{base}-warm-*")

        ceiling_rates: list[float] = []
        indexer_rates: list[float] = []
        counts: list[int] = []
        chunks: list[bytes] = []
        for round_no in range(ROUNDS):
            # Each run writes fresh indices and deletes them after: no run inherits another's merges.
            ceiling_prefix = f"{base}-r{round_no}-ceiling-"
            chunks = prebuilt_chunks(ranges, ceiling_prefix)
            for phase in ("ceiling", "indexer") if round_no % 2 == 0 else ("indexer", "ceiling"):
                if phase == "ceiling":
                    seconds = send_chunks(es, chunks)
                    ceiling_rates.append(total / seconds)
                    drop(es, f"{ceiling_prefix}*")
                else:
                    prefix = f"{base}-r{round_no}-indexer-"
                    seconds, count = run_indexer(es, ranges, prefix, f"{run}-{round_no}")
                    indexer_rates.append(total / seconds)
                    counts.append(count)
                    drop(es, f"{prefix}*")
                print(f"round {round_no + 1} {phase}: {total} docs in {seconds:.1f}s = {total / seconds:,.0f} docs/s")

        seed_docs, seed_s = seed_way(es, chunks, args.seed_sample)
        seed_rate = seed_docs / seed_s
        print(f"seed:    {seed_docs} docs in {seed_s:.1f}s = {seed_rate:,.0f} docs/s (extrapolated)", flush=True)

        indexer_rate = median(indexer_rates)
        ceiling_rate = median(ceiling_rates)
        figures = {
            "records": total,
            "rounds": ROUNDS,
            "partitions": PARTITIONS,
            "chunk_docs": DEFAULT_CHUNK_DOCS,
            "chunk_bytes": DEFAULT_CHUNK_BYTES,
            "in_flight": IN_FLIGHT,
            "preload_s": round(produce_s, 2),
            "indexer_docs_per_s": round(indexer_rate),
            "indexer_docs_per_s_spread": spread(indexer_rates),
            "indexer_count_in_es": min(counts),
            "ceiling_docs_per_s": round(ceiling_rate),
            "ceiling_docs_per_s_spread": spread(ceiling_rates),
            "seed_docs_per_s": round(seed_rate, 1),
            "seed_sample_docs": seed_docs,
            "ratio_indexer_to_ceiling": round(indexer_rate / ceiling_rate, 3),
            "ratio_indexer_to_ceiling_per_round": spread(
                [i / c for i, c in zip(indexer_rates, ceiling_rates, strict=True)], digits=3
            ),
            "ratio_indexer_to_seed": round(indexer_rate / seed_rate, 1),
            "targets": {"ratio_indexer_to_ceiling": 0.8, "ratio_indexer_to_seed": 30},
            "notes": "medians of alternating rounds (min-max in *_spread), each run into a fresh index",
        }
        write_section("indexer", figures)
        print(json.dumps(figures, indent=2))
        return 0
    finally:
        drop(es, f"{base}-*")
        admin.delete_topics([topic, dlq], operation_timeout=30)


if __name__ == "__main__":
    sys.exit(main())
