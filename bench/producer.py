"""Producer throughput: synthetic feed at full speed → client → Kafka, against the seed's loop.

Rounds of runs (medians kept), each against a fresh ``serve-feed --synthetic --rate 0`` process on loopback and a fresh
LogAppendTime topic on the local broker (``make services``):

1. quoteflow's ``produce`` command (its own process, so its RSS is measurable) with 500 symbols,
   on the default feed shape (several packets per websocket message);
2. the same command on a one-packet-per-message feed;
3. the seed's loop, reproduced faithfully: ``re.search(r"\\{.*\\}")`` over each message,
   ``json.loads``, "No disponible" defaults, a local-clock timestamp and a Kafka ``flush()`` after
   every quote. Its greedy regex cannot parse a message holding several packets, so it runs on the
   one-packet-per-message feed, where it can work at all.

Figures (quotes/s delivered to Kafka, ratio, peak RSS) go to bench/results.json via write_section.
``BENCH_QUICK=1`` runs each measurement for 5 s instead of 10 s (same rounds). ``bench/_ab.py`` calls
:func:`run_quoteflow` with ``src`` set to run another commit's code.

**At scale** (section ``producer_scale``, ``--only scale``): 5,000 symbols from one synthetic feed at full
speed, in alternating rounds of (a) one connection (one ``produce`` process, all symbols) and (b) the
sharded layout the DAG maps: ``quoteflow.shards.plan`` at the default shard size, one ``produce``
process per shard (as each mapped task is its own process) with ``--shard`` and its ``--start-delay``.
Figures: aggregate quotes/s (sum of each process's delivered/streaming seconds, and delivered over the
whole wall time), producer RSS in total (the highest sum of the processes' RSS, sampled every 0.25 s)
and per shard (peak), and the time from launch until every symbol has its first quote in Kafka (read
back from the topic: each key's first record's LogAppendTime). The shards connect
``BENCH_SCALE_SPACING`` seconds apart (default 1 s, so a round stays short); the default spacing of
the DAG (5 s) adds 4 s per shard to that time, which the section states as arithmetic.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_section  # noqa: E402

from quoteflow import shards  # noqa: E402

BOOTSTRAP = os.environ.get("QUOTEFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
SYMBOL_COUNT = 500
QUICK = os.environ.get("BENCH_QUICK") == "1"
RUN_SECONDS = 5.0 if QUICK else 10.0
BASELINE_SECONDS = 4.0 if QUICK else 8.0
# Alternate quoteflow and baseline runs and keep medians: the shared 2-core box is noisy.
ROUNDS = 3
SRC = ROOT / "include"  # the library this checkout holds, ahead of whatever else is installed
SCALE_SYMBOLS = 5000
SCALE_SECONDS = 30.0  # the last of 10 shards waits up to 9.5 s at 1 s spacing: a plan needs twice that
SCALE_ROUNDS = 2 if QUICK else 3
SCALE_SPACING_S = float(os.environ.get("BENCH_SCALE_SPACING", "1.0"))


def _env(src: Path = SRC) -> dict[str, str]:
    """The environment of a child process that runs the library found in ``src``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(ROOT)])}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_feed(packets_per_message: int, symbols: int = SYMBOL_COUNT) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "quoteflow", "--log-level", "WARNING", "serve-feed", "--port", str(port),
         "--synthetic", "--symbols", str(symbols), "--rate", "0",
         "--packets-per-message", str(packets_per_message), "--seed", "1"],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, json.loads(line)["listening"]


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _topic(admin) -> str:
    from confluent_kafka.admin import NewTopic

    name = f"bench.producer.{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(name, 1, 1, config={"message.timestamp.type": "LogAppendTime"})])[name].result(30)
    return name


def _peak_rss_mb(pid: int, field: str = "VmHWM") -> float | None:
    """The process's peak RSS (``VmHWM``) or, with ``field="VmRSS"``, its current RSS, in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _records_in(topic: str) -> int:
    """The topic's high watermark (one partition): what the broker really holds."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"bench-{uuid.uuid4().hex[:8]}"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
        return high - low
    finally:
        consumer.close()


def run_quoteflow(
    admin, symbols: list[str], packets_per_message: int, seconds: float = RUN_SECONDS, src: Path = SRC
) -> dict:
    """The ``produce`` command of the library in ``src`` for ``seconds``; quotes/s from its own summary, RSS from /proc.

    The feed is always this checkout's, so two libraries compared by ``bench/_ab.py`` meet the same feed.
    """
    feed, url = _start_feed(packets_per_message)
    topic = _topic(admin)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "quoteflow", "--log-level", "WARNING", "produce", "--url", url,
             "--symbols", ",".join(symbols), "--topic", topic, "--bootstrap", BOOTSTRAP,
             "--max-seconds", str(seconds)],
            cwd=ROOT, env=_env(src), stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, _peak_rss_mb(proc.pid) or 0.0)
            time.sleep(0.5)
        assert proc.stdout is not None
        summary = json.loads(proc.stdout.read().strip().splitlines()[-1])
        in_topic = _records_in(topic)
        if in_topic != summary["quotes"]:
            raise RuntimeError(f"topic holds {in_topic} records but the producer reported {summary['quotes']}")
    finally:
        _stop(feed)
        admin.delete_topics([topic])
    return {
        "quotes": summary["quotes"],
        "records_in_topic": in_topic,
        "seconds": summary["seconds"],
        "quotes_per_s": round(summary["quotes"] / summary["seconds"], 1),
        "peak_rss_mb": round(peak, 1),
        "reconnects": summary["reconnects"],
        "malformed_packets": summary["malformed_packets"],
    }


def run_seed_baseline(admin, symbols: list[str]) -> dict:
    """The seed's loop, as it was: regex extraction, json.loads, send + flush() per quote."""
    import websocket
    from confluent_kafka import Producer

    feed, url = _start_feed(1)
    topic = _topic(admin)
    delivered = 0
    try:
        producer = Producer({"bootstrap.servers": BOOTSTRAP})
        ws = websocket.create_connection(url)
        session = "qs_seedbaseline"

        def send(method: str, params: list) -> None:
            payload = json.dumps({"m": method, "p": params}, separators=(",", ":"))
            ws.send(f"~m~{len(payload)}~m~{payload}")

        send("set_auth_token", ["unauthorized_user_token"])
        send("quote_create_session", [session])
        send("quote_set_fields", [session, "lp", "ch", "chp", "volume"])
        send("quote_add_symbols", [session, *symbols])
        started = time.monotonic()
        while time.monotonic() - started < BASELINE_SECONDS:
            result = ws.recv()
            if "~h~" in result:
                ws.send("~m~4~m~~h~0")  # the seed's bare heartbeat reply
                continue
            match = re.search(r"\{.*\}", result)
            if not match:
                continue
            try:
                data = json.loads(match.group())
            except json.JSONDecodeError:
                continue
            if data.get("m") != "qsd":
                continue
            body = data["p"][1]
            values = body.get("v", {})
            quote = {
                "symbol": body.get("n"),
                "price": values.get("lp", "No disponible"),
                "change": values.get("ch", "No disponible"),
                "change_percent": values.get("chp", "No disponible"),
                "volume": values.get("volume", "No disponible"),
                "timestamp": datetime.now().isoformat(),
            }
            producer.produce(topic, json.dumps(quote).encode(), key=str(quote["symbol"]).encode())
            producer.flush()
            delivered += 1
        if _records_in(topic) != delivered:
            raise RuntimeError("baseline: topic and counter disagree")
        elapsed = time.monotonic() - started
        ws.close()
    finally:
        _stop(feed)
        admin.delete_topics([topic])
    return {"quotes": delivered, "seconds": round(elapsed, 3), "quotes_per_s": round(delivered / elapsed, 1)}


def _first_quote_times(topic: str, keys: set[str]) -> dict[str, float]:
    """Each key's first record's LogAppendTime (epoch s), reading the topic from its start until every key is seen."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})  # fmt: skip
    first: dict[str, float] = {}
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        idle = 0
        while len(first) < len(keys) and idle < 5:
            batch = consumer.consume(10_000, timeout=1.0)
            idle = 0 if batch else idle + 1
            for msg in batch:
                if msg.error() is None:
                    key = msg.key().decode()
                    if key not in first:
                        first[key] = msg.timestamp()[1] / 1000.0
    finally:
        consumer.close()
    return first


def _shard_argv(url: str, topic: str, shard: shards.Shard) -> list[str]:
    """One shard's ``produce`` command line, as its mapped task would run it."""
    return [sys.executable, "-m", "quoteflow", "--log-level", "WARNING", "produce", "--url", url,
            "--symbols", ",".join(shard.symbols), "--topic", topic, "--bootstrap", BOOTSTRAP,
            "--max-seconds", str(SCALE_SECONDS), "--shard", shard.shard,
            "--start-delay", str(shard.start_delay_s)]  # fmt: skip


def run_scale(admin, symbols: list[str], layout: str, spacing_s: float = SCALE_SPACING_S) -> dict:
    """One round at scale: ``layout`` ``"one_connection"`` or ``"sharded"`` (one ``produce`` process per shard)."""
    if layout == "sharded":
        plan = shards.plan(symbols, shards.DEFAULT_SHARD_SIZE, spacing_s=spacing_s, max_seconds=SCALE_SECONDS)
    else:
        plan = [shards.Shard("0", 0, 1, tuple(symbols), 0.0)]
    feed, url = _start_feed(50, symbols=len(symbols))
    topic = _topic(admin)
    try:
        launched = time.time()
        procs = [
            subprocess.Popen(_shard_argv(url, topic, s), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True)
            for s in plan
        ]
        peaks = [0.0] * len(procs)
        total_rss = 0.0
        while any(p.poll() is None for p in procs):
            now_total = 0.0
            for i, proc in enumerate(procs):
                if proc.poll() is None:
                    peaks[i] = max(peaks[i], _peak_rss_mb(proc.pid) or 0.0)
                    now_total += _peak_rss_mb(proc.pid, "VmRSS") or 0.0
            total_rss = max(total_rss, now_total)
            time.sleep(0.25)
        wall = time.time() - launched
        summaries = []
        for proc in procs:
            assert proc.stdout is not None
            summaries.append(json.loads(proc.stdout.read().strip().splitlines()[-1]))
        quotes = sum(s["quotes"] for s in summaries)
        in_topic = _records_in(topic)
        if in_topic != quotes:
            raise RuntimeError(f"topic holds {in_topic} records but the producers reported {quotes}")
        first = _first_quote_times(topic, set(symbols))
    finally:
        _stop(feed)
        admin.delete_topics([topic])
    if len(first) != len(symbols):
        raise RuntimeError(f"{len(symbols) - len(first)} symbol(s) got no quote at all")
    first_after = sorted(t - launched for t in first.values())
    return {
        "layout": layout,
        "connections": len(plan),
        "quotes": quotes,
        "quotes_per_s": round(sum(s["quotes"] / s["seconds"] for s in summaries), 1),
        "quotes_per_s_wall": round(quotes / wall, 1),
        "rss_mb_total": round(total_rss, 1),
        "peak_rss_mb_per_shard": [round(p, 1) for p in peaks],
        "all_symbols_first_quote_s": round(first_after[-1], 2),
        "median_symbol_first_quote_s": round(first_after[len(first_after) // 2], 2),
        "last_start_delay_s": max(s.start_delay_s for s in plan),
        "reconnects": sum(s["reconnects"] for s in summaries),
        "handshake_errors": sum(v for s in summaries for k, v in s["errors"].items() if k.startswith("handshake")),
    }


def main_scale() -> dict:
    """Alternating rounds of one connection and the sharded layout at 5,000 symbols; the ``producer_scale`` section."""
    from statistics import median

    from confluent_kafka.admin import AdminClient

    from quoteflow.tradingview.feed_server import synthetic_universe

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    symbols = synthetic_universe(SCALE_SYMBOLS)
    print(f"producer bench at scale: {SCALE_SYMBOLS} symbols, shard_size {shards.DEFAULT_SHARD_SIZE}, "
          f"spacing {SCALE_SPACING_S} s, {SCALE_SECONDS:.0f} s per run", flush=True)  # fmt: skip
    runs: dict[str, list[dict]] = {"one_connection": [], "sharded": []}
    for round_no in range(1, SCALE_ROUNDS + 1):
        order = ("one_connection", "sharded") if round_no % 2 else ("sharded", "one_connection")
        for layout in order:
            runs[layout].append(run_scale(admin, symbols, layout))
            print(f"  round {round_no} {layout}: {runs[layout][-1]}", flush=True)

    def spread(layout: str, key: str) -> dict[str, float]:
        values = [r[key] for r in runs[layout]]
        return {"median": round(median(values), 2), "min": min(values), "max": max(values)}

    keys = ("quotes_per_s", "quotes_per_s_wall", "rss_mb_total", "all_symbols_first_quote_s",
            "median_symbol_first_quote_s")  # fmt: skip
    figures: dict = {
        "symbols": SCALE_SYMBOLS,
        "shard_size": shards.DEFAULT_SHARD_SIZE,
        "shards": runs["sharded"][0]["connections"],
        "spacing_s": SCALE_SPACING_S,
        "run_seconds": SCALE_SECONDS,
        "rounds": SCALE_ROUNDS,
    }
    for layout in runs:
        figures[layout] = {key: spread(layout, key) for key in keys}
        per_shard = [p for r in runs[layout] for p in r["peak_rss_mb_per_shard"]]
        figures[layout]["peak_rss_mb_per_shard"] = {"median": round(median(per_shard), 1), "min": min(per_shard),
                                                    "max": max(per_shard)}  # fmt: skip

    def last_start(spacing: float) -> str:
        first = (figures["shards"] - 1) * spacing
        return f"{first:g}-{first + spacing * shards.JITTER_FRACTION:g} s"

    figures["default_spacing_note"] = (
        f"at the DAG's default spacing ({shards.DEFAULT_CONNECT_SPACING_S:g} s) the last of {figures['shards']} "
        f"shards connects {last_start(shards.DEFAULT_CONNECT_SPACING_S)} after the run starts, instead of "
        f"{last_start(SCALE_SPACING_S)} here: add the difference to the sharded first-quote times"
    )
    figures["runs"] = runs
    figures["notes"] = (
        "one synthetic feed process at full speed (rate 0, 50 packets/message) shares the 2 cores with the "
        "producers, so aggregate quotes/s is capped by the feed and the CPU, not by the connection count; "
        "first-quote times count from launching the processes (Python start-up included)"
    )
    write_section("producer_scale", figures)
    print(json.dumps({k: v for k, v in figures.items() if k != "runs"}), flush=True)
    return figures


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("throughput", "scale"), help="run one part (default: both)")
    args = parser.parse_args()
    if args.only != "throughput":
        main_scale()
    if args.only == "scale":
        return 0
    return main_throughput()


def main_throughput() -> int:
    from statistics import median

    from confluent_kafka.admin import AdminClient

    from quoteflow.tradingview.feed_server import synthetic_universe

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    symbols = synthetic_universe(SYMBOL_COUNT)
    print(f"producer bench: {SYMBOL_COUNT} symbols, feed at full speed, Kafka at {BOOTSTRAP}", flush=True)
    ours_runs, base_runs = [], []
    for round_no in range(1, ROUNDS + 1):
        ours_runs.append(run_quoteflow(admin, symbols, packets_per_message=50))
        print(f"  round {round_no} quoteflow, 50 packets/message: {ours_runs[-1]}", flush=True)
        base_runs.append(run_seed_baseline(admin, symbols))
        print(f"  round {round_no} seed loop, 1 packet/message:   {base_runs[-1]}", flush=True)
    ours_single = run_quoteflow(admin, symbols, packets_per_message=1)
    print(f"  quoteflow, 1 packet/message: {ours_single}", flush=True)
    ours_rate = median(r["quotes_per_s"] for r in ours_runs)
    base_rate = median(r["quotes_per_s"] for r in base_runs)
    ratios = [o["quotes_per_s"] / max(b["quotes_per_s"], 1e-9) for o, b in zip(ours_runs, base_runs, strict=True)]
    figures = {
        "symbols": SYMBOL_COUNT,
        "quotes_per_s": ours_rate,
        "quotes_per_s_single_packet_messages": ours_single["quotes_per_s"],
        "baseline_quotes_per_s": base_rate,
        "ratio_vs_baseline": round(median(ratios), 1),
        "ratio_vs_baseline_same_feed_shape": round(ours_single["quotes_per_s"] / max(base_rate, 1e-9), 1),
        "peak_rss_mb_500_symbols": max(r["peak_rss_mb"] for r in [*ours_runs, ours_single]),
        "targets": {"quotes_per_s": 50_000, "ratio_vs_baseline": 20, "peak_rss_mb": 150},
        "runs": {"quoteflow": ours_runs, "quoteflow_single_packet": ours_single, "seed_baseline": base_runs},
        "notes": (
            "medians of alternating rounds; the baseline runs on 1 packet/message because the seed's greedy "
            "regex cannot parse multi-packet messages; on that feed the feed process itself caps quoteflow"
        ),
    }
    write_section("producer", figures)
    print(json.dumps({k: v for k, v in figures.items() if k != "runs"}), flush=True)
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench-producer"
    sys.exit(main())
