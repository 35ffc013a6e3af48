"""Gap fill under the real scheduler: the feed drops the producer for over 2 minutes, no one-minute bar is lost.

Its own `make run SOURCE=replay` (the synthetic feed, 3 symbols, one-minute bars on by default), on its
own ports. Once bars reach Elasticsearch, the test swaps `make run`'s feed server for one of the same walk
(seed 0) that starts with a 130 s outage (`--fault outage:0:130`: every connection cut, every upgrade
answered 503): the producer loses its link, retries into the outage with backoff, and reconnects after it.
Then, checked in Elasticsearch only: the gap event (cause ``disconnect``, over 2 minutes) is indexed, and
for every symbol every one-minute bar from two minutes before the gap to the minute it ended is there,
closed, with exactly the walk's values, and the bars wholly inside the gap are marked ``gap_fill``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from elasticsearch import ConnectionError as ESConnectionError
from elasticsearch import Elasticsearch, NotFoundError

from tests.e2e.conftest import ROOT, Pipeline, make_run, run_env
from tests.helpers.processes import stop_process
from tests.helpers.waiting import wait_until

SYMBOLS = ("BINANCE:SOLUSDT", "BINANCE:BTCUSDT", "BINANCE:ETHUSDT")
OUTAGE_S = 130
FIRST_BARS_TIMEOUT_S = 420
AFTER_OUTAGE_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def gap_pipeline(kafka_bootstrap: str, es_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    run_dir = tmp_path_factory.mktemp("make-run-gap-fill")
    env = run_env(
        run_dir,
        os.environ.get("QUOTEFLOW_E2E_GAPFILL_AIRFLOW_PORT", os.environ.get("QUOTEFLOW_E2E_AIRFLOW_PORT", "47080")),
        os.environ.get("QUOTEFLOW_E2E_GAPFILL_FEED_PORT", os.environ.get("QUOTEFLOW_E2E_FEED_PORT", "47765")),
        os.environ.get("QUOTEFLOW_E2E_GAPFILL_HEALTH_PORT", os.environ.get("QUOTEFLOW_E2E_HEALTH_PORT", "47974")),
    )
    with make_run(kafka_bootstrap, es_url, run_dir, env) as pipe:
        yield pipe


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def feed_with_outage(pipe: Pipeline) -> Iterator[float]:
    """Stop `make run`'s feed server, start one of the same walk with an outage from its start; yield the cut time."""
    port = int(pipe.env["QUOTEFLOW_FEED_PORT"])
    pid = int((pipe.state_dir / "feed.pid").read_text().split()[0])
    os.kill(pid, signal.SIGTERM)  # the feed make run started for this test (its PID file, its run folder)
    cut = time.time()
    wait_until("the old feed server's port to be free", lambda: _port_free(port), 30, interval=0.2)
    log = (pipe.state_dir / "logs" / "gap-fill-feed.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "quoteflow", "serve-feed", "--host", "127.0.0.1", "--port", str(port),
         "--synthetic", "--symbols", "3", "--rate", "20", "--fault", f"outage:0:{OUTAGE_S}"],
        cwd=ROOT, env=pipe.env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield cut
    finally:
        stop_process(proc)
        log.close()


def _bars(es: Elasticsearch, symbol: str, starts: list[int]) -> dict[int, dict[str, Any]]:
    """The one-minute bar documents of ``symbol`` at these starts (epoch s), by start (none while ES is away)."""
    from quoteflow.bars import bar_id, bar_start
    from quoteflow.quotes import parse_timestamp

    ids = [bar_id(symbol, "1", bar_start(s)) for s in starts]
    try:
        es.indices.refresh(index="bars-tradingview-*")
        hits = es.search(index="bars-tradingview-*", size=len(ids) + 10, query={"ids": {"values": ids}})["hits"]["hits"]
    except (ESConnectionError, NotFoundError):
        return {}  # a restart of the shared Elasticsearch, or no bars index yet: ask again
    return {int(parse_timestamp(h["_source"]["start"]).timestamp()): h["_source"] for h in hits}


def _gap_event(es: Elasticsearch, after: float) -> dict[str, Any] | None:
    from quoteflow.quotes import format_timestamp

    since = format_timestamp(after, milliseconds=True)
    try:
        es.indices.refresh(index="gaps-tradingview-*")
        hits = es.search(
            index="gaps-tradingview-*",
            size=10,
            sort=[{"start": "desc"}],
            query={
                "bool": {
                    "filter": [{"terms": {"cause": ["disconnect", "stall"]}}, {"range": {"start": {"gte": since}}}]
                }
            },
        )["hits"]["hits"]
    except (ESConnectionError, NotFoundError):
        return None
    return hits[0]["_source"] if hits else None


def test_a_two_minute_outage_leaves_no_missing_one_minute_bar(gap_pipeline: Pipeline) -> None:
    from quoteflow.quotes import parse_timestamp
    from quoteflow.tradingview.feed.walk import Walk, parse_resolution

    es = Elasticsearch(gap_pipeline.es_url, request_timeout=30)
    started = gap_pipeline.started_at

    def closed_bar_indexed() -> bool:
        minute = int(time.time() // 60 * 60) - 120
        return all(_bars(es, s, [minute]).get(minute, {}).get("closed") for s in SYMBOLS)

    wait_until("closed one-minute bars of every symbol in Elasticsearch", closed_bar_indexed, FIRST_BARS_TIMEOUT_S, 5)
    with feed_with_outage(gap_pipeline) as cut:
        gap = wait_until(
            "the outage's gap event (disconnect, or stall if the cut is noticed by the watchdog) in Elasticsearch",
            lambda: _gap_event(es, cut - 60),
            OUTAGE_S + 240,
            interval=5,
        )
        assert gap is not None
        start = parse_timestamp(gap["start"]).timestamp()
        end = parse_timestamp(gap["end"]).timestamp()
        assert end - start > 120, gap
        assert start <= cut + 1 and sorted(gap["symbols"]) == sorted(SYMBOLS) and gap["shard"] == "0", gap
        first = int(start // 60 * 60) - 120
        last = int(end // 60 * 60)  # the minute in which data came back: it must close and be indexed too
        minutes = list(range(first, last + 60, 60))

        def all_closed() -> dict[str, dict[int, dict[str, Any]]] | None:
            found = {s: _bars(es, s, minutes) for s in SYMBOLS}
            complete = all(len(f) == len(minutes) and all(b["closed"] for b in f.values()) for f in found.values())
            return found if complete else None

        found = wait_until("every one-minute bar of the period, closed", all_closed, AFTER_OUTAGE_TIMEOUT_S, 10)
    assert found is not None
    walk, minute = Walk(0), parse_resolution("1")
    for symbol in SYMBOLS:
        bars = found[symbol]
        assert sorted(bars) == minutes  # no hole
        for moment, bar in bars.items():
            expected = walk.wire(symbol, moment, walk.bar(symbol, minute, moment))
            assert [float(moment), bar["open"], bar["high"], bar["low"], bar["close"], bar["volume"]] == expected
        inside = [m for m in minutes if int(start // 60 * 60) <= m <= last - 60]
        assert inside and all(bars[m]["origin"] == "gap_fill" for m in inside), {m: bars[m]["origin"] for m in minutes}
    assert started < start
