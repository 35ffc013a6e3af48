"""Bars and gap events through ``jobs.produce`` against the local feed server and the real broker."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
import pytest

from quoteflow import jobs
from quoteflow.bars import BAR_HEADERS, decode_bar, encode_bar
from quoteflow.gaps import decode_gap
from quoteflow.quotes import format_timestamp, parse_timestamp
from quoteflow.tradingview.feed.synthetic import synthetic_universe
from tests.helpers.producing import FAST_CLIENT, LOG_APPEND, feed, read_topic

SYMBOLS = synthetic_universe(3)


def _topics(make_topic: Any) -> dict[str, Any]:
    return {
        "topic": make_topic(1, LOG_APPEND),
        "bars_topic": make_topic(1, LOG_APPEND),
        "gaps_topic": make_topic(1, LOG_APPEND),
    }


def _produce(server: Any, bootstrap: str, topics: dict[str, Any], seconds: float, **kwargs: Any) -> dict[str, Any]:
    pipeline = jobs.Pipeline(kafka={"bootstrap.servers": bootstrap}, **topics)
    options = {**FAST_CLIENT, "bar_resolutions": ["1"], "history_bars": 5, **kwargs}
    return jobs.produce(pipeline, url=server.url, symbols=SYMBOLS, max_seconds=seconds, **options)


def _gaps(bootstrap: str, topic: str, expect: int | None = None) -> list[dict[str, Any]]:
    records = read_topic(bootstrap, topic, expect=expect, idle=2.0)
    for record in records:
        assert record.headers() == [("schema", b"gap.v1")]
        assert record.key() == orjson.loads(record.value())["gap_id"].encode()
    return [decode_gap(r.value()) for r in records]


def test_a_dropped_connection_is_one_disconnect_gap_and_a_fresh_history_request(make_topic, kafka_bootstrap):
    topics = _topics(make_topic)
    with feed(synthetic_symbols=3, rate=200, drop_after=20, fault_connections=1) as server:
        summary = _produce(server, kafka_bootstrap, topics, 6.0)
    assert summary["connects"] == 2 and summary["gaps"] == 1 and summary["gaps_seen"] == 1
    assert summary["history_requests"] == 6  # 3 series × 2 connects
    (gap,) = _gaps(kafka_bootstrap, topics["gaps_topic"], expect=1)
    assert gap["cause"] == "disconnect" and gap["shard"] == "0" and gap["symbols"] == SYMBOLS
    assert gap["gap_id"] == f"0-disconnect-{round(parse_timestamp(gap['start']).timestamp() * 1000)}"
    length = (parse_timestamp(gap["end"]) - parse_timestamp(gap["start"])).total_seconds()
    assert 0 <= length < 5, gap
    assert "connection_lost" in (gap["detail"] or "")
    # Every create_series of the second connection asked for the history again.
    creates = [p for _, m, p in server.stats.client_packets if m == "create_series"]
    assert len(creates) == 6 and {p[5] for p in creates} == {5} and {p[4] for p in creates} == {"1"}


def test_a_stalled_link_is_a_stall_gap_as_long_as_the_watchdog(make_topic, kafka_bootstrap):
    topics = _topics(make_topic)
    with feed(synthetic_symbols=3, rate=200, stall_after=20, fault_connections=1) as server:
        summary = _produce(server, kafka_bootstrap, topics, 7.0)
    assert summary["gaps"] == 1 and summary["errors"].get("watchdog") == 1
    (gap,) = _gaps(kafka_bootstrap, topics["gaps_topic"], expect=1)
    assert gap["cause"] == "stall" and "no inbound message" in (gap["detail"] or "")
    length = (parse_timestamp(gap["end"]) - parse_timestamp(gap["start"])).total_seconds()
    assert FAST_CLIENT["watchdog_timeout"] <= length < 6, gap


def test_a_run_starting_after_the_previous_runs_last_bar_records_a_handover_gap(make_topic, kafka_bootstrap):
    """The last bar the previous run wrote (30 s ago) starts the gap; this run's first data ends it."""
    from confluent_kafka import Producer

    topics = _topics(make_topic)
    last = time.time() - 30
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    value = encode_bar(
        symbol=SYMBOLS[1], resolution="1", start=last - last % 60, open=1, high=1, low=1, close=1, volume=1,
        closed=False, origin="live", received_at=format_timestamp(last, milliseconds=True),
    )  # fmt: skip
    producer.produce(topics["bars_topic"], value, f"{SYMBOLS[1]}|1".encode(), headers=BAR_HEADERS)
    producer.produce(
        topics["bars_topic"], value.replace(b'"1"', b'"5"'), f"{SYMBOLS[1]}|5".encode(), headers=BAR_HEADERS
    )
    assert producer.flush(10) == 0
    with feed(synthetic_symbols=3, rate=200) as server:
        before = time.time()
        summary = _produce(server, kafka_bootstrap, topics, 2.0)
        after = time.time()
    assert summary["gaps"] == 1 and summary["connects"] == 1
    (gap,) = _gaps(kafka_bootstrap, topics["gaps_topic"], expect=1)
    assert gap["cause"] == "handover"
    assert abs(parse_timestamp(gap["start"]).timestamp() - last) < 0.002
    assert before < parse_timestamp(gap["end"]).timestamp() < after
    # The history request of the first connect reaches back over the gap (30 s: history_bars still covers it).
    creates = [p for _, m, p in server.stats.client_packets if m == "create_series"]
    assert {p[5] for p in creates} == {5}
    # Its bars from the one the gap began in onwards are gap_fill, the older ones plain history.
    bars = _bars(kafka_bootstrap, topics["bars_topic"], 2 + summary["bars"])[2:]
    first = last - last % 60
    burst = [b for b in bars if b["origin"] != "live"]
    assert len(burst) == 15
    assert all((b["origin"] == "gap_fill") == (_epoch(b["start"]) >= first) for b in burst), burst
    assert any(b["origin"] == "gap_fill" for b in burst) and any(b["origin"] == "history" for b in burst)


def test_bars_off_when_their_topics_are_missing_quotes_still_flow(make_topic, kafka_bootstrap, caplog):
    topics = {**_topics(make_topic), "gaps_topic": "gaps.missing-in-this-test"}
    with caplog.at_level(logging.ERROR, logger="quoteflow.stream"), feed(synthetic_symbols=3, rate=200) as server:
        summary = _produce(server, kafka_bootstrap, topics, 1.5)
    assert summary["quotes"] > 0 and "bars" not in summary
    assert "bars are OFF for this run: topic gaps.missing-in-this-test does not exist" in caplog.text
    assert server.stats.client_methods["create_series"] == 0


def test_bad_bar_settings_are_refused_naming_the_fix(make_topic, kafka_bootstrap):
    from quoteflow.settings import ConfigError

    topics = _topics(make_topic)
    with feed(synthetic_symbols=3) as server:
        with pytest.raises(ConfigError, match="history_bars must be an integer from 1 to 10000"):
            _produce(server, kafka_bootstrap, topics, 1.0, history_bars=0)
        with pytest.raises(ConfigError, match="bar resolution 'X' is not one TradingView knows"):
            _produce(server, kafka_bootstrap, topics, 1.0, bar_resolutions=["X"])
        with pytest.raises(ConfigError, match="not among the producer's symbols"):
            _produce(server, kafka_bootstrap, topics, 1.0, bar_symbols=["NOPE:X"])


def _bars(bootstrap: str, topic: str, expect: int) -> list[dict[str, Any]]:
    records = read_topic(bootstrap, topic, expect=expect, idle=2.0)
    assert len(records) == expect
    for record in records:
        assert record.headers() == [("schema", b"bar.v1")]
    out = [decode_bar(r.value()) for r in records]
    assert [r.key().decode() for r in records] == [f"{b['symbol']}|{b['resolution']}" for b in out]
    return out


def _epoch(text: str) -> int:
    return int(parse_timestamp(text).timestamp())


def _final(bars: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The newest record of each (symbol, start): what Elasticsearch ends up holding."""
    return {(b["symbol"], b["start"]): b for b in bars}


def test_history_then_live_bars_are_exactly_the_walks_bars(make_topic, kafka_bootstrap, caplog):
    """3 symbols, 5 history bars each, the feed clock at 20x: every closed bar in Kafka equals the feed's walk."""
    from quoteflow.tradingview.feed.walk import parse_resolution

    topics = _topics(make_topic)
    feed_settings = {"synthetic_symbols": 3, "rate": 50, "seed": 5, "clock_speed": 20.0, "du_interval": 0.2}
    with caplog.at_level(logging.INFO, logger="quoteflow.stream"), feed(**feed_settings) as server:
        summary = _produce(server, kafka_bootstrap, topics, 6.0, stats_interval=2.0)
        walk = server.walk
    assert "delivered over 3 series, 0 gap(s), 3 history request(s)" in caplog.text  # the stats line
    assert summary["history_requests"] == 3 and summary["bars_by_origin"]["history"] == 15
    assert summary["errors"].get("invalid_bar", 0) == 0 and summary["quotes"] > 0
    bars = _bars(kafka_bootstrap, topics["bars_topic"], summary["bars"])
    minute = parse_resolution("1")
    for symbol in SYMBOLS:
        history = [b for b in bars if b["symbol"] == symbol and b["origin"] == "history"]
        starts = [_epoch(b["start"]) for b in history]
        assert starts == list(range(starts[0], starts[0] + 5 * 60, 60)), starts  # the last 5 minutes, in order
        assert [b["closed"] for b in history] == [True] * 4 + [False]
        live = [b for b in bars if b["symbol"] == symbol and b["origin"] == "live"]
        assert any(b["closed"] for b in live), "the feed clock at 20x rolls a minute within the run"
        final = {start: b for (sym, start), b in _final(bars).items() if sym == symbol}
        seen = sorted(_epoch(s) for s in final)
        assert seen == list(range(seen[0], seen[-1] + 60, 60)), "no hole between the first and the last bar"
        assert [final[s]["closed"] for s in sorted(final)] == [True] * (len(seen) - 1) + [False]
        for bar in (b for b in bars if b["symbol"] == symbol and b["closed"]):
            start = _epoch(bar["start"])
            expected = walk.wire(symbol, start, walk.bar(symbol, minute, start))
            got = [float(start), bar["open"], bar["high"], bar["low"], bar["close"], bar["volume"]]
            assert got == expected, (symbol, bar["start"], bar["origin"])
        for bar in (b for b in bars if b["symbol"] == symbol and not b["closed"]):
            start = _epoch(bar["start"])
            whole = walk.wire(symbol, start, walk.bar(symbol, minute, start))
            assert bar["open"] == whole[1] and whole[3] <= bar["low"] <= bar["high"] <= whole[2]


def test_a_history_only_fetch_stops_once_every_series_is_complete(make_topic, kafka_bootstrap):
    from quoteflow.tradingview.feed.walk import parse_resolution

    topics = _topics(make_topic)
    pipeline = jobs.Pipeline(kafka={"bootstrap.servers": kafka_bootstrap}, **topics)
    with feed(synthetic_symbols=3, seed=9) as server:
        started = time.monotonic()
        summary = jobs.bars(pipeline, url=server.url, symbols=SYMBOLS, resolutions=["1", "5"], count=20, **FAST_CLIENT)
        took = time.monotonic() - started
        walk = server.walk
        methods = server.stats.client_methods
    assert summary["stopped_by"] == "history_complete" and took < 30
    assert summary["bars_by_origin"]["history"] == 3 * 2 * 20 and summary["quotes"] == 0
    assert methods["quote_create_session"] == 0 and methods["create_series"] == 6
    bars = _bars(kafka_bootstrap, topics["bars_topic"], summary["bars"])
    for bar in (b for b in bars if b["closed"] and b["origin"] == "history"):
        start, res = _epoch(bar["start"]), parse_resolution(bar["resolution"])
        expected = walk.wire(bar["symbol"], start, walk.bar(bar["symbol"], res, start))
        assert [float(start), bar["open"], bar["high"], bar["low"], bar["close"], bar["volume"]] == expected


def test_a_series_error_drops_that_series_only(make_topic, kafka_bootstrap):
    """60-minute bars not entitled, one symbol unknown to charts: the other series and every quote stream on."""
    topics = _topics(make_topic)
    with feed(synthetic_symbols=3, rate=100, not_entitled=("60",), symbol_errors=(SYMBOLS[2],)) as server:
        summary = _produce(server, kafka_bootstrap, topics, 3.0, bar_resolutions=["1", "60"])
    assert sorted(summary["dropped_series"]) == sorted([f"{s}|60" for s in SYMBOLS] + [f"{SYMBOLS[2]}|1"]), summary[
        "dropped_series"
    ]
    assert summary["bar_series"] == 2 and summary["connects"] == 1 and summary["reconnects"] == 0
    bars = _bars(kafka_bootstrap, topics["bars_topic"], summary["bars"])
    assert {(b["symbol"], b["resolution"]) for b in bars} == {(SYMBOLS[0], "1"), (SYMBOLS[1], "1")}
    quotes = read_topic(kafka_bootstrap, topics["topic"], expect=summary["quotes"], idle=2.0)
    assert {r.key().decode() for r in quotes} == set(SYMBOLS)
    assert server.stats.client_methods["chart_delete_session"] == 4


def test_the_bars_command_fetches_history_and_refuses_a_half_range(make_topic, kafka_bootstrap):
    import json
    import subprocess
    import sys

    bars_topic = make_topic(1, LOG_APPEND)
    base = [sys.executable, "-m", "quoteflow", "bars", "--bootstrap", kafka_bootstrap, "--bars-topic", bars_topic]
    with feed(synthetic_symbols=3) as server:
        done = subprocess.run(
            [*base, "--url", server.url, "--symbols", ",".join(SYMBOLS[:2]), "--count", "7", "--resolution", "15"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        half = subprocess.run([*base, "--url", server.url, "--from", "1764547200"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["stopped_by"] == "history_complete" and summary["bars_by_origin"]["history"] == 14
    bars = _bars(kafka_bootstrap, bars_topic, summary["bars"])
    assert {b["resolution"] for b in bars} == {"15"} and {b["symbol"] for b in bars} == set(SYMBOLS[:2])
    assert half.returncode == 2 and "--from and --to go together" in half.stderr


def test_an_outage_leaves_no_hole_in_the_bars(make_topic, kafka_bootstrap):
    """The feed cuts every link and refuses upgrades (503) for 8 s, its clock at 20x: over 2 minutes of bars pass
    unseen. After the reconnect the history covers them: no hole, every closed bar the walk's.

    (Which bars are marked gap_fill goes by the real clock, the gap's; at 20x the feed's bar times run ahead of
    it, so that is checked at 1x: the handover test here, and tests/e2e/test_gap_fill.py.)"""
    from quoteflow.tradingview.feed.walk import parse_resolution

    topics = _topics(make_topic)
    settings = {"synthetic_symbols": 3, "rate": 50, "clock_speed": 20.0, "du_interval": 0.2, "outages": ((2.0, 8.0),)}
    with feed(**settings) as server:
        summary = _produce(server, kafka_bootstrap, topics, 16.0, history_bars=5)
        walk = server.walk
    assert summary["gaps"] == 1 and summary["connects"] == 2, summary
    (gap,) = _gaps(kafka_bootstrap, topics["gaps_topic"], expect=1)
    assert gap["cause"] == "disconnect"
    assert (parse_timestamp(gap["end"]) - parse_timestamp(gap["start"])).total_seconds() >= 6.0
    bars = _bars(kafka_bootstrap, topics["bars_topic"], summary["bars"])
    minute = parse_resolution("1")
    for symbol in SYMBOLS:
        final = {start: b for (sym, start), b in _final(bars).items() if sym == symbol}
        seen = sorted(_epoch(s) for s in final)
        assert len(seen) > 3 + 120 // 60 and seen == list(range(seen[0], seen[-1] + 60, 60)), "a hole in the bars"
        for start, bar in ((_epoch(s), b) for s, b in final.items() if b["closed"]):
            expected = walk.wire(symbol, start, walk.bar(symbol, minute, start))
            assert [float(start), bar["open"], bar["high"], bar["low"], bar["close"], bar["volume"]] == expected
    origins = summary["bars_by_origin"]
    assert origins["history"] + origins.get("gap_fill", 0) == 2 * 3 * 5  # two connects' history
