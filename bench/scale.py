"""Scale arithmetic from measured figures: bytes per indexed quote and bar, the feed's update rate, shards per day.

1. **rate**: the local feed server's synthetic walk as ``make run`` starts it (3 symbols,
   ``QUOTEFLOW_FEED_RATE`` 20 updates/s) through the real producer (``jobs.produce``) into a fresh
   topic for ``RATE_SECONDS``; per symbol, quotes per second from the records' ``received_at``.
2. **quotes**: ``SYMBOLS`` x ``SECONDS`` quotes, one per symbol per second, every field filled as in a
   captured TradingView ``qsd`` snapshot (the fullest a quote gets), prices walking; each becomes the
   indexer's exact document (``elastic.documents.bulk_lines``) in a fresh ``quotes-bench-*`` index under
   the real ``quotes`` template. Bytes per document from ``_stats`` (primaries' ``store``): after a refresh
   and flush, and after a force-merge to one segment (what a closed day settles to).
3. **bars**: the same for closed one-minute bars (``bars.encode_bar`` → ``elastic.documents.bar_lines``)
   under the real ``bars`` template, when those are in this checkout.

Each size is measured over ``ROUNDS`` rounds, each into a fresh index (quotes and bars alternate, as do
rate rounds), medians with min–max. The arithmetic (docs and GB per day per 1,000 symbols, primary
shards per day at Elastic's 10–50 GB guidance) is computed from the medians and written beside them.

The real TradingView update rate is *not* measured here (TradingView is out of reach): the captured
frames are a curated selection (NSE:JUNIPER: 4 qsd frames in 69.5 s of capture), too sparse to give a
rate. The arithmetic therefore uses an **assumed** 1 update/s per symbol (a liquid instrument's quote
stream; the capture's ``series_completed`` carries ``rt_update_period: 5``, i.e. a chart update every
5 s, so 0.2/s is given as the quiet case) and the measured synthetic rate beside it.

Run: ``.venv/bin/python bench/scale.py``; figures go to bench/results.json (section ``scale``).
``BENCH_QUICK=1``: fewer documents (same rounds). Needs the local services.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import orjson  # noqa: E402
from _results import write_section  # noqa: E402
from elasticsearch import Elasticsearch  # noqa: E402

from quoteflow.elastic.documents import bulk_lines  # noqa: E402
from quoteflow.elastic.template import ensure_template, index_template  # noqa: E402
from quoteflow.quotes import Quote, format_timestamp  # noqa: E402

BOOTSTRAP = "127.0.0.1:9092"
ES_URL = "http://127.0.0.1:9200"
QUICK = os.environ.get("BENCH_QUICK") == "1"
ROUNDS = 3
SYMBOLS = 1000
SECONDS = 60 if QUICK else 200  # quotes per symbol in the sample: 200,000 documents
BAR_MINUTES = 60 if QUICK else 144  # bars per symbol: 144,000 documents (a tenth of a day)
RATE_SECONDS = 10.0 if QUICK else 20.0
RATE_SYMBOLS = 3
FEED_RATE = float(os.environ.get("QUOTEFLOW_FEED_RATE", "20"))  # scripts/run's default
ASSUMED_TV_RATES = {"assumed_liquid": 1.0, "assumed_quiet": 0.2}  # updates/s/symbol, see the docstring
SHARD_GB = (10, 50)
GB = 1e9
DAY_S = 86_400
BARS_PER_DAY = 1440  # one-minute bars; each closed bar is one document (later versions overwrite it)
CHUNK_DOCS = 2000
STABLE_READS = 15
T = TypeVar("T")
EXCHANGES = ("BINANCE", "COINBASE", "NASDAQ", "NYSE", "NSE", "KRAKEN", "BITSTAMP", "XETR")


def spread(values: list[float], digits: int = 1) -> dict[str, float]:
    """Median with min and max, as every figure here is reported."""
    return {
        "median": round(median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def symbols(n: int) -> list[tuple[str, str, str]]:
    """``n`` (symbol, exchange, ticker) with realistic name lengths (``NASDAQ:AAPL`` … ``BINANCE:SOL0417USDT``)."""
    rng = random.Random(7)
    out = []
    for i in range(n):
        exchange = EXCHANGES[i % len(EXCHANGES)]
        ticker = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(3, 5)))
        ticker += f"{i:03d}" + ("USDT" if exchange in ("BINANCE", "KRAKEN", "BITSTAMP") else "")
        out.append((f"{exchange}:{ticker}", exchange, ticker))
    return out


# ------------------------------------------------------------------ 1. the synthetic walk's rate


def measure_rate(seconds: float) -> float:
    """Quotes per second per symbol of the feed's synthetic walk through the real producer (median over symbols)."""
    from quoteflow import jobs
    from quoteflow.jobs import Pipeline
    from quoteflow.kafka import clients
    from quoteflow.kafka.admin import admin_client, ensure_topic, quotes_topic_spec
    from quoteflow.kafka.reader import PartitionRange, read_ranges, topic_partitions, watermarks
    from quoteflow.tradingview.feed.synthetic import synthetic_universe
    from quoteflow.tradingview.feed_server import FeedConfig, FeedServer

    kafka = {"bootstrap.servers": BOOTSTRAP}
    topic = f"bench.scale.{uuid.uuid4().hex[:8]}"
    admin = admin_client(kafka)
    ensure_topic(admin, quotes_topic_spec(topic, 1, 3_600_000))
    try:
        server = FeedServer(FeedConfig(synthetic_symbols=RATE_SYMBOLS, rate=FEED_RATE)).start()
        try:
            jobs.produce(
                Pipeline(kafka=kafka, topic=topic),
                url=server.url,
                symbols=synthetic_universe(RATE_SYMBOLS),
                max_seconds=seconds,
                stats_interval=3600,
            )
        finally:
            server.stop()
        times: dict[str, list[float]] = defaultdict(list)
        with clients.consumer(kafka, "bench-scale") as reader:
            ranges = [PartitionRange(topic, p, *watermarks(reader, topic, p)) for p in topic_partitions(reader, topic)]
            for batch in read_ranges(reader, ranges):
                for msg in batch:
                    doc = orjson.loads(msg.value())
                    times[doc["symbol"]].append(datetime.fromisoformat(doc["received_at"]).timestamp())
    finally:
        admin.delete_topics([topic], operation_timeout=30)
    rates = [(len(t) - 1) / (max(t) - min(t)) for t in times.values() if len(t) > 1 and max(t) > min(t)]
    if len(rates) != RATE_SYMBOLS:
        raise RuntimeError(f"quotes for {len(rates)} of {RATE_SYMBOLS} symbols")
    return median(rates)


# ------------------------------------------------------------------ 2. and 3. bytes per document


def quote_chunks(prefix: str) -> tuple[list[bytes], int, float]:
    """The indexer's documents for SYMBOLS x SECONDS full quotes; (bulk bodies, docs, mean Kafka value bytes)."""
    rng = random.Random(11)
    universe = symbols(SYMBOLS)
    prices = {s: 10 ** rng.uniform(-1, 4) for s, _, _ in universe}
    start = int(time.time()) - SECONDS
    lines: list[bytes] = []
    value_bytes = 0
    offset = 0
    for second in range(start, start + SECONDS):
        event_time = format_timestamp(second)
        for symbol, exchange, ticker in universe:
            price = prices[symbol] = round(prices[symbol] * (1 + rng.gauss(0, 0.0005)), 6)
            spread_ = round(price * 0.0002, 6)
            quote = Quote(
                symbol=symbol,
                exchange=exchange,
                ticker=ticker,
                price=price,
                change=round(price * rng.uniform(-0.03, 0.03), 6),
                change_percent=round(rng.uniform(-3, 3), 2),
                volume=float(rng.randint(10_000, 90_000_000)),
                bid=round(price - spread_, 6),
                ask=round(price + spread_, 6),
                high=round(price * 1.02, 6),
                low=round(price * 0.98, 6),
                open=round(price * 0.995, 6),
                prev_close=round(price * 0.99, 6),
                currency="USDT" if ticker.endswith("USDT") else "USD",
                update_mode="streaming",
                event_time=event_time,
                received_at=format_timestamp(second + rng.uniform(0.05, 0.9), milliseconds=True),
            )
            value = quote.to_json()
            value_bytes += len(value)
            partition = offset % 3
            lines.append(bulk_lines(value, "quotes.tradingview", partition, offset // 3, second * 1000 + 120, prefix))
            offset += 1
    return chunked(lines), offset, value_bytes / offset


def bar_chunks(prefix: str) -> tuple[list[bytes], int, float]:
    """Documents of SYMBOLS x BAR_MINUTES closed one-minute bars; (bulk bodies, docs, mean Kafka value bytes)."""
    from quoteflow.bars import bar_start, encode_bar
    from quoteflow.elastic.documents import bar_lines

    rng = random.Random(13)
    universe = symbols(SYMBOLS)
    closes = {s: 10 ** rng.uniform(-1, 4) for s, _, _ in universe}
    first_minute = (int(time.time()) // 60 - BAR_MINUTES) * 60
    lines: list[bytes] = []
    value_bytes = 0
    offset = 0
    for minute in range(first_minute, first_minute + BAR_MINUTES * 60, 60):
        start = bar_start(minute)
        for symbol, _, _ in universe:
            open_ = closes[symbol]
            close = round(open_ * (1 + rng.gauss(0, 0.001)), 6)
            high = round(max(open_, close) * (1 + abs(rng.gauss(0, 0.0005))), 6)
            low = round(min(open_, close) * (1 - abs(rng.gauss(0, 0.0005))), 6)
            closes[symbol] = close
            value = encode_bar(
                symbol=symbol,
                resolution="1",
                start=start,
                open=open_,
                high=high,
                low=low,
                close=close,
                volume=float(rng.randint(100, 5_000_000)),
                closed=True,
                origin="live",
                received_at=format_timestamp(minute + 60.2, milliseconds=True),
            )
            value_bytes += len(value)
            partition = offset % 3
            lines.append(bar_lines(value, "bars.tradingview", partition, offset // 3, minute * 1000 + 60_200, prefix))
            offset += 1
    return chunked(lines), offset, value_bytes / offset


def chunked(lines: list[bytes]) -> list[bytes]:
    """Bulk bodies of CHUNK_DOCS documents (the indexer's chunk size)."""
    return [b"".join(lines[i : i + CHUNK_DOCS]) for i in range(0, len(lines), CHUNK_DOCS)]


def index_and_measure(es: Elasticsearch, chunks: list[bytes], prefix: str, docs: int) -> dict[str, float]:
    """Bulk ``chunks`` into ``<prefix>*``; bytes per doc (primaries) after refresh+flush, and after a force-merge."""
    client = es.options(request_timeout=300)
    for body in chunks:
        response = client.bulk(operations=body, filter_path="errors,items.*.error")
        if response.get("errors"):
            raise RuntimeError(f"bulk item errors: {str(response)[:500]}")
    pattern = f"{prefix}*"
    for name, body in dict(client.indices.get_mapping(index=pattern)).items():
        if body["mappings"].get("dynamic") != "strict":  # the template was missing: a dynamic mapping is larger
            raise RuntimeError(f"{name} was not created from the project's template: {body['mappings']}")
    client.indices.refresh(index=pattern)
    client.indices.flush(index=pattern)

    def per_doc() -> tuple[float, int]:
        # Segment files a merge replaced are deleted once nothing holds them: read until the size stands still.
        last = -1
        for _ in range(STABLE_READS):
            stats = client.indices.stats(index=pattern, metric="store,docs")["_all"]["primaries"]
            if stats["docs"]["count"] != docs:
                raise RuntimeError(f"{stats['docs']['count']} documents in {pattern}, expected {docs}")
            size = stats["store"]["size_in_bytes"]
            if size == last:
                break
            last = size
            time.sleep(2)
        return size / docs, size

    flushed, _ = per_doc()
    client.indices.forcemerge(index=pattern, max_num_segments=1, wait_for_completion=True)
    client.indices.refresh(index=pattern)
    merged, total = per_doc()
    return {"flushed": flushed, "merged": merged, "merged_total_bytes": total}


def drop(es: Elasticsearch, pattern: str) -> None:
    """Delete the indices matching ``pattern``."""
    es.options(ignore_status=404).indices.delete(index=pattern, expand_wildcards="all")


def code_version(paths: list[str]) -> str:
    """The commit these figures come from, and whether ``paths`` had uncommitted changes when measured."""
    import subprocess

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=ROOT, capture_output=True, text=True)
    return head.strip() + (" + uncommitted changes to " + ", ".join(paths) if dirty.stdout.strip() else "")


def bars_available() -> bool:
    """Whether this checkout has the bars template and documents (the bars work lands separately)."""
    try:
        from quoteflow.bars import encode_bar  # noqa: F401
        from quoteflow.elastic.documents import bar_lines  # noqa: F401
        from quoteflow.elastic.template import bars_template  # noqa: F401
    except ImportError:
        return False
    return True


def measure_size(es: Elasticsearch, kind: str, with_bars: bool) -> tuple[dict[str, float], int, float]:
    """One round of ``kind`` (quotes or bars) into a fresh index, deleted after; (sizes, docs, mean value bytes)."""
    tag = uuid.uuid4().hex[:8]
    prefix = f"quotes-bench-scale-{tag}-" if kind == "quotes" else f"bars-bench-scale-{tag}-"
    build = quote_chunks if kind == "quotes" else bar_chunks
    chunks, docs, value_bytes = build(prefix)
    ensure_templates(es, with_bars)  # each round: a service restarted meanwhile may have lost them
    try:
        return index_and_measure(es, chunks, prefix, docs), docs, value_bytes
    finally:
        drop(es, f"{prefix}*")


def again_after_restarts(measure: Callable[[], T], attempts: int = 3) -> T:
    """``measure()``; when a shared service went away meanwhile (others' tests restart them), wait and redo it."""
    from confluent_kafka import KafkaException
    from elastic_transport import ConnectionError as EsConnectionError

    for attempt in range(1, attempts + 1):
        try:
            return measure()
        except (EsConnectionError, KafkaException) as exc:
            if attempt == attempts:
                raise
            print(f"a service went away ({type(exc).__name__}); redoing this measurement in 30 s", flush=True)
            time.sleep(30)
    raise AssertionError("unreachable")


def ensure_templates(es: Elasticsearch, with_bars: bool) -> None:
    """The real ``quotes`` (and ``bars``) index templates, as ``quotes_setup`` puts them."""
    ensure_template(es)
    if with_bars:
        from quoteflow.elastic.template import bars_template
        from quoteflow.settings import BARS_TEMPLATE_NAME

        ensure_template(es, BARS_TEMPLATE_NAME, bars_template())


# ------------------------------------------------------------------ the arithmetic


def arithmetic(rate: float, bytes_per_doc: float, docs_per_symbol_day: float | None = None) -> dict[str, Any]:
    """Docs and GB per day per 1,000 symbols, and primary shards per day at 10 and 50 GB a shard."""
    docs = docs_per_symbol_day if docs_per_symbol_day is not None else rate * DAY_S
    docs_day = docs * 1000
    gb_day = docs_day * bytes_per_doc / GB
    return {
        "docs_per_day_per_1000_symbols": round(docs_day),
        "gb_per_day_per_1000_symbols": round(gb_day, 2),
        "primary_shards_per_day": {f"at_{g}_gb": max(1, math.ceil(gb_day / g)) for g in SHARD_GB},
    }


def main() -> None:
    es = Elasticsearch(ES_URL, request_timeout=300)
    with_bars = bars_available()
    quote_sizes: dict[str, list[float]] = defaultdict(list)
    bar_sizes: dict[str, list[float]] = defaultdict(list)
    rates: list[float] = []
    sample: dict[str, Any] = {}
    for round_ in range(ROUNDS):
        kinds = ["quotes", "bars"] if round_ % 2 == 0 else ["bars", "quotes"]
        for kind in kinds:
            if kind == "bars" and not with_bars:
                continue
            sizes, docs, value_bytes = again_after_restarts(lambda kind=kind: measure_size(es, kind, with_bars))
            target = quote_sizes if kind == "quotes" else bar_sizes
            for key, value in sizes.items():
                target[key].append(value)
            sample[kind] = {"documents": docs, "kafka_value_bytes_mean": round(value_bytes, 1)}
            print(f"round {round_ + 1} {kind}: {docs} docs, {sizes}", flush=True)
        rates.append(again_after_restarts(lambda: measure_rate(RATE_SECONDS)))
        print(f"round {round_ + 1} synthetic walk: {rates[-1]:.2f} quotes/s/symbol", flush=True)

    quote_bytes = median(quote_sizes["merged"])
    figures: dict[str, Any] = {
        "quotes": {
            **sample["quotes"],
            "bytes_per_doc_flushed": spread(quote_sizes["flushed"]),
            "bytes_per_doc_merged": spread(quote_sizes["merged"]),
            "template": index_template()["template"]["settings"],
            "code": code_version(["include/quoteflow/quotes.py", "include/quoteflow/elastic"]),
        },
        "synthetic_walk": {
            "symbols": RATE_SYMBOLS,
            "feed_rate_total": FEED_RATE,
            "quotes_per_s_per_symbol": spread(rates, 2),
            "seconds_per_round": RATE_SECONDS,
        },
        "assumption": {
            "tradingview_updates_per_s_per_symbol": ASSUMED_TV_RATES,
            "why": "not measured: the captured frames are a curated selection (NSE:JUNIPER: 4 qsd frames in 69.5 s); "
            "1/s for a liquid instrument, 0.2/s from the capture's series_completed rt_update_period 5",
        },
        "shard_guidance_gb": list(SHARD_GB),
        "quotes_arithmetic": {
            name: {"updates_per_s_per_symbol": rate, **arithmetic(rate, quote_bytes)}
            for name, rate in {**ASSUMED_TV_RATES, "synthetic_walk": round(median(rates), 2)}.items()
        },
        "rounds": ROUNDS,
        "quick": QUICK,
    }
    if with_bars:
        bar_bytes = median(bar_sizes["merged"])
        daily = arithmetic(0.0, bar_bytes, docs_per_symbol_day=BARS_PER_DAY)
        figures["bars"] = {
            **sample["bars"],
            "bytes_per_doc_flushed": spread(bar_sizes["flushed"]),
            "bytes_per_doc_merged": spread(bar_sizes["merged"]),
            "bars_per_day_per_symbol": BARS_PER_DAY,
            "code": code_version(["include/quoteflow/bars.py", "include/quoteflow/elastic"]),
        }
        month_gb = BARS_PER_DAY * 1000 * bar_bytes * 31 / GB
        figures["bars_arithmetic"] = {
            **daily,
            "gb_per_31_day_month_per_1000_symbols": round(month_gb, 2),
            "primary_shards_per_monthly_index": {f"at_{g}_gb": max(1, math.ceil(month_gb / g)) for g in SHARD_GB},
        }
    else:
        figures["bars"] = "not measured: quoteflow.bars / bars template not in this checkout"
    for leftover in ("quotes-bench-scale-*", "bars-bench-scale-*"):  # a round cut short by a restart
        drop(es, leftover)
    write_section("scale", figures)
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
