"""Shards against the feed server and real Kafka, each one ``jobs.produce`` call in its own thread, as the
mapped tasks run: spaced starts pass TradingView's handshake rate limit where unspaced ones trip it (429),
and a shard that fails, or keeps retrying its handshake, does not stop another shard from streaming."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from quoteflow import jobs, shards
from quoteflow.settings import ConfigError
from quoteflow.tradingview.feed_server import synthetic_universe
from quoteflow.tradingview.session import NoValidSymbols
from tests.helpers.producing import FAST_CLIENT, LOG_APPEND, feed, read_topic, volumes_by_symbol

SYMBOLS = synthetic_universe(8)
LIMIT = (2, 2.0)  # at most 2 accepted upgrades in any 2 s, like TradingView's handshake limit (429 beyond)
# Backoff after a 429 is uniform in [cap/2, cap]: longer than any test run, so a refused shard stays refused.
CLIENT = {**FAST_CLIENT, "backoff_cap": 30.0}


def run_shards(url: str, topic: str, bootstrap: str, plan: list[shards.Shard], seconds: float) -> dict[str, Any]:
    """Every shard of ``plan`` as its own ``jobs.produce`` call in its own thread; ``{shard: summary or error}``."""
    out: dict[str, Any] = {}
    pipeline = jobs.Pipeline(kafka={"bootstrap.servers": bootstrap}, topic=topic)

    def one(s: shards.Shard) -> None:  # a shard that raised leaves no entry, which the caller's asserts catch
        out[s.shard] = jobs.produce(pipeline, url=url, symbols=s.symbols, max_seconds=seconds, shard=s.shard,
                                    start_delay_s=s.start_delay_s, **CLIENT)  # fmt: skip

    threads = [threading.Thread(target=one, args=(s,), name=f"shard-{s.shard}") for s in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 30)
    assert not any(t.is_alive() for t in threads)
    return out


@pytest.mark.parametrize("spacing", [1.5, 0.0], ids=["spaced", "unspaced"])
def test_spaced_shards_all_connect_within_the_handshake_limit_unspaced_ones_trip_429(spacing, make_topic,
                                                                                     kafka_bootstrap):  # fmt: skip
    plan = shards.plan(SYMBOLS, 2, spacing_s=spacing, rng=random.Random(1))
    assert len(plan) == 4
    topic = make_topic(1, LOG_APPEND)
    with feed(synthetic_symbols=len(SYMBOLS), rate=200, packets_per_message=2, handshake_limit=LIMIT) as server:
        summaries = run_shards(server.url, topic, kafka_bootstrap, plan, seconds=7.0)
        refused = server.stats.refused_rate_limited
    assert sorted(summaries) == ["0", "1", "2", "3"]  # every shard returned its summary
    rejected = {k: s["errors"].get("handshake_429", 0) for k, s in summaries.items()}
    if spacing:
        assert refused == 0 and set(rejected.values()) == {0}
        assert all(s["connects"] == 1 and s["quotes"] > 10 for s in summaries.values())
        records = read_topic(kafka_bootstrap, topic, expect=sum(s["quotes"] for s in summaries.values()))
        assert set(volumes_by_symbol(records)) == set(SYMBOLS)
    else:
        # The check can fail: four connects at once, two slots: two shards are refused with 429 and back off.
        assert refused >= 2 and sum(rejected.values()) >= 2
        assert sum(1 for s in summaries.values() if s["connects"] == 0) >= 2


def test_a_failing_shard_and_a_retrying_shard_do_not_stop_a_healthy_one(make_topic, kafka_bootstrap):
    topic = make_topic(1, LOG_APPEND)
    pipeline = jobs.Pipeline(kafka={"bootstrap.servers": kafka_bootstrap}, topic=topic)
    results: dict[str, Any] = {}
    finished: dict[str, float] = {}

    def shard(name: str, url: str, symbols: list[str], seconds: float) -> None:
        try:
            results[name] = jobs.produce(pipeline, url=url, symbols=symbols, max_seconds=seconds, shard=name,
                                         **FAST_CLIENT)  # fmt: skip
        except ConfigError as exc:  # recorded for the test to assert on
            results[name] = exc
        finished[name] = time.monotonic()

    with (
        feed(synthetic_symbols=4, rate=200, packets_per_message=2) as healthy,
        feed(synthetic_symbols=4, rate=200, handshake_status=503) as refusing,
    ):
        started = time.monotonic()
        threads = [
            threading.Thread(target=shard, args=("0", healthy.url, synthetic_universe(4), 8.0)),
            # Every symbol unknown to the feed: the shard fails (a ConfigError, so its task fails without retrying).
            threading.Thread(target=shard, args=("1", healthy.url, ["NOPE:AAA", "NOPE:BBB"], 8.0)),
            # Every handshake refused: the shard keeps retrying with backoff, alone.
            threading.Thread(target=shard, args=("2", refusing.url, synthetic_universe(4), 8.0)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=40)
    assert isinstance(results["1"], NoValidSymbols) and finished["1"] - started < 6.0
    retrying = results["2"]
    assert retrying["shard"] == "2" and retrying["quotes"] == 0
    assert retrying["errors"].get("handshake_503", 0) >= 3 and retrying["reconnects"] >= 3
    ok = results["0"]
    assert ok["shard"] == "0" and ok["connects"] == 1 and ok["reconnects"] == 0 and ok["errors"] == {}
    assert ok["stopped_by"] == "max_seconds" and ok["seconds"] >= 7.5  # streamed its whole run meanwhile
    records = read_topic(kafka_bootstrap, topic, expect=ok["quotes"])
    assert len(records) == ok["quotes"] > 100
    for symbol, seen in volumes_by_symbol(records).items():
        assert seen == [float(i) for i in range(1, len(seen) + 1)], symbol  # nothing lost or doubled


def test_the_produce_command_runs_one_shard_late_and_records_into_the_shards_own_file(make_topic, kafka_bootstrap,
                                                                                       tmp_path):  # fmt: skip
    import json
    import subprocess
    import sys

    topic = make_topic(1, LOG_APPEND)
    record = tmp_path / "frames.jsonl"
    with feed(synthetic_symbols=4, rate=200, packets_per_message=2) as server:
        argv = [sys.executable, "-m", "quoteflow", "--log-level", "WARNING", "produce", "--url", server.url,
                "--symbols", ",".join(synthetic_universe(4)[2:]), "--topic", topic, "--bootstrap", kafka_bootstrap,
                "--max-seconds", "6", "--shard", "1", "--start-delay", "2", "--record", str(record)]  # fmt: skip
        launched = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        connected_after = server.stats.connect_times[0] - launched
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["shard"] == "1" and summary["symbols"] == 2 and summary["quotes"] > 10
    assert connected_after >= 2.0  # it waited its start delay before connecting
    assert summary["seconds"] < 5.0  # ... and the delay came out of its 6 s budget
    assert not record.exists()  # the shard's own file, never the shared name
    lines = (tmp_path / "frames.shard-1.jsonl").read_text().splitlines()
    assert any('"quote_add_symbols"' in json.loads(line)["raw"] for line in lines)
