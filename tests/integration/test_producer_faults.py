"""Faults from the feed server: drop, stall, bad token, bad symbol, flags, critical_error, garbage.

Each one must end in reconnects with backoff (measured), clear errors, no crash, no tight loop,
and no duplicate quote in Kafka.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import websocket

from quoteflow.tradingview.feed_server import synthetic_universe
from quoteflow.tradingview.protocol import decode_message, encode_packet, frame
from tests.helpers.producing import LOG_APPEND, feed, produce, read_topic, volumes_by_symbol

SYMBOLS = synthetic_universe(3)


def _assert_no_duplicates_no_gaps(records, summary):
    """The synthetic feed numbers each symbol's updates 1, 2, 3 ... in ``volume``: Kafka must hold each once."""
    by_symbol = volumes_by_symbol(records)
    assert set(by_symbol) == set(SYMBOLS)
    for symbol, seen in by_symbol.items():
        assert seen == [float(i) for i in range(1, len(seen) + 1)], f"{symbol}: duplicates or gaps in {seen[:20]}"
    assert len(records) == summary["quotes"] == summary["quotes_sent"]


def test_dropped_connections_reconnect_with_backoff_and_no_duplicates(make_topic, kafka_bootstrap):
    topic = make_topic(1, LOG_APPEND)
    with feed(synthetic_symbols=3, rate=300, packets_per_message=3, drop_after=8, seed=1) as server:
        summary = produce(server, SYMBOLS, topic, kafka_bootstrap, seconds=6.0)
        connect_times = list(server.stats.connect_times)
        subscribed = [(n, p) for n, m, p in server.stats.client_packets if m == "quote_add_symbols"]
    assert summary["stopped_by"] == "max_seconds"
    # Every connection set the whole subscription up again, under a fresh session id.
    assert [n for n, _ in subscribed] == list(range(1, len(connect_times) + 1))
    assert all(p[1:] == SYMBOLS for _, p in subscribed)
    assert len({p[0] for _, p in subscribed}) == len(subscribed)
    assert summary["reconnects"] >= 3
    assert summary["errors"].get("connection_lost", 0) >= 3
    # Not a tight loop: 8 messages at 100 msg/s last ~0.08 s, so only backoff spaces the connects.
    assert len(connect_times) <= 20
    gaps = [b - a for a, b in zip(connect_times, connect_times[1:], strict=False)]
    assert max(gaps) >= 0.2  # backoff grew beyond the first step
    _assert_no_duplicates_no_gaps(read_topic(kafka_bootstrap, topic, expect=summary["quotes"]), summary)


def test_backoff_delays_are_measured_between_connects():
    """Full jitter under a cap, and the server really sees the client wait that long."""
    from quoteflow.stream import client_config
    from quoteflow.tradingview.client import TradingViewClient

    with feed(synthetic_symbols=3, rate=200, packets_per_message=2, drop_after=2, seed=2) as server:
        config = client_config(server.url, SYMBOLS, backoff_initial=0.3, backoff_cap=1.2, poll_interval=0.1)
        client = TradingViewClient(config, lambda state, received_at: None)
        stats = client.run(threading.Event(), time.monotonic() + 6.0)
        connect_times = list(server.stats.connect_times)
    delays = stats.backoff_delays
    assert len(delays) >= 4
    for attempt, delay in enumerate(delays):
        assert 0.0 <= delay <= min(1.2, 0.3 * 2**attempt) + 1e-9
    gaps = [b - a for a, b in zip(connect_times, connect_times[1:], strict=False)]
    for gap, delay in zip(gaps, delays, strict=False):
        assert gap >= delay - 0.05  # the client never reconnects sooner than its backoff says


def test_backoff_resets_after_a_stable_connection():
    """Connections that stayed up longer than ``stable_after`` restart the backoff from its first step."""
    from quoteflow.stream import client_config
    from quoteflow.tradingview.client import TradingViewClient

    # 4 messages at 10 msg/s keep each connection up ~0.4 s, longer than stable_after=0.2 s.
    with feed(synthetic_symbols=3, rate=20, packets_per_message=2, drop_after=4, seed=4) as server:
        config = client_config(
            server.url, SYMBOLS, backoff_initial=0.1, backoff_cap=5.0, stable_after=0.2, poll_interval=0.05
        )
        stats = TradingViewClient(config, lambda state, received_at: None).run(
            threading.Event(), time.monotonic() + 4.0
        )
    assert len(stats.backoff_delays) >= 3
    assert all(delay <= 0.1 for delay in stats.backoff_delays)  # always attempt 0, never 0.2, 0.4, ...


def test_stalled_feed_trips_the_watchdog_and_resumes_without_duplicates(make_topic, kafka_bootstrap):
    topic = make_topic(1, LOG_APPEND)
    with feed(synthetic_symbols=3, rate=300, packets_per_message=3, stall_after=10, fault_connections=1) as server:
        summary = produce(server, SYMBOLS, topic, kafka_bootstrap, seconds=6.0, watchdog_timeout=1.0)
        connections = server.stats.connections
        connect_times = list(server.stats.connect_times)
    assert summary["errors"].get("watchdog") == 1
    assert summary["reconnects"] == 1 and connections == 2
    assert connect_times[1] - connect_times[0] >= 1.0  # silence lasted the watchdog's timeout first
    assert summary["quotes"] > 30  # the second connection streamed again
    _assert_no_duplicates_no_gaps(read_topic(kafka_bootstrap, topic, expect=summary["quotes"]), summary)


def test_bad_auth_token_gets_a_clear_error_and_a_slow_retry(tmp_path, make_topic, kafka_bootstrap, caplog):
    topic = make_topic(1, LOG_APPEND)
    record = tmp_path / "recorded.jsonl"
    token = "eyJhbGciOi.user-secret.sig"
    with feed(synthetic_symbols=3, tokens=("only-this-token",)) as server, caplog.at_level(logging.INFO):
        summary = produce(
            server, SYMBOLS, topic, kafka_bootstrap, 5.0, auth_token=token, auth_retry_delay=2.0, record_path=record
        )
        connect_times = list(server.stats.connect_times)
        errors_sent = dict(server.stats.errors_sent)
    assert errors_sent["protocol_error"] == len(connect_times)
    assert 2 <= len(connect_times) <= 3  # one try every 2 s, not a tight loop
    assert all(b - a >= 1.9 for a, b in zip(connect_times, connect_times[1:], strict=False))
    assert summary["errors"]["protocol_error"] == len(connect_times)
    assert summary["quotes"] == 0
    assert "rejected the auth token" in caplog.text
    assert token not in caplog.text
    recorded = record.read_text(encoding="utf-8")
    assert token not in recorded and "<redacted>" in recorded  # nor in the recording


def test_unknown_symbol_is_dropped_once_and_the_others_go_on(make_topic, kafka_bootstrap, caplog):
    topic = make_topic(1, LOG_APPEND)
    with feed(synthetic_symbols=3, rate=200, packets_per_message=2) as server, caplog.at_level(logging.INFO):
        summary = produce(server, [*SYMBOLS, "BINANCE:NOSUCH"], topic, kafka_bootstrap, 3.0, stats_interval=0.5)
        removed = [p for _, m, p in server.stats.client_packets if m == "quote_remove_symbols"]
    assert summary["errors"] == {"symbol_error": 1}
    assert list(summary["dropped_symbols"]) == ["BINANCE:NOSUCH"]
    assert summary["reconnects"] == 0
    assert [p[1:] for p in removed] == [["BINANCE:NOSUCH"]]
    refusals = [r for r in caplog.records if "refused symbol BINANCE:NOSUCH" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR
    # The periodic stats line: rate, reconnects and last-tick ages, several times in 3 s at a 0.5 s interval.
    stats_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stats: ")]
    assert len(stats_lines) >= 3
    assert "quotes/s" in stats_lines[-1] and "0 reconnect(s)" in stats_lines[-1]
    assert "BINANCE:SOLUSDT=" in stats_lines[-1] and "no tick yet: 0 symbol(s)" in stats_lines[-1]
    assert "last heartbeat" in stats_lines[-1] and "delayed feed: none" in stats_lines[-1]
    _assert_no_duplicates_no_gaps(read_topic(kafka_bootstrap, topic, expect=summary["quotes"]), summary)


def test_every_symbol_refused_is_a_loud_config_error_not_an_idle_loop(make_topic, kafka_bootstrap):
    from quoteflow.settings import ConfigError

    topic = make_topic(1, LOG_APPEND)
    started = time.monotonic()
    with feed(synthetic_symbols=3) as server, pytest.raises(ConfigError, match="BINANCE:NOSUCH.*fix the symbol"):
        produce(server, ["BINANCE:NOSUCH", "BINANCE:NOPE"], topic, kafka_bootstrap, 10.0)
    assert time.monotonic() - started < 5.0


def test_garbage_and_bad_length_prefixes_are_skipped_on_a_live_connection(make_topic, kafka_bootstrap):
    topic = make_topic(1, LOG_APPEND)
    with feed(synthetic_symbols=3, rate=300, packets_per_message=3, garbage_every=2, bad_length_every=3) as server:
        summary = produce(server, SYMBOLS, topic, kafka_bootstrap, seconds=3.0)
        sent = server.stats.messages_sent
    assert summary["reconnects"] == 0 and summary["errors"] == {}
    # Every 2nd message got a garbage packet and every 3rd a bad prefix; when both land in one message the
    # resynchronisation may skip them as one stretch, so count at least one per faulty message.
    assert summary["malformed_packets"] >= sent // 2 + sent // 3 - sent // 6 - 1
    _assert_no_duplicates_no_gaps(read_topic(kafka_bootstrap, topic, expect=summary["quotes"]), summary)


def test_critical_error_reconnects_with_backoff(tmp_path, make_topic, kafka_bootstrap):
    """A replayed critical_error for our session: the client drops the link and sets up afresh."""
    replay = tmp_path / "critical.jsonl"
    tick = encode_packet("qsd", ["qs_rec", {"n": "BINANCE:SOLUSDT", "s": "ok", "v": {"lp": 142.5}}])
    critical = encode_packet("critical_error", ["qs_rec", "invalid_parameters", "quote_add_symbols"])
    replay.write_text(
        json.dumps({"direction": "server->client", "raw": tick})
        + "\n"
        + json.dumps({"direction": "server->client", "raw": critical})
        + "\n"
    )
    topic = make_topic(1, LOG_APPEND)
    with feed(replay=replay, speed=0) as server:
        summary = produce(server, ["BINANCE:SOLUSDT"], topic, kafka_bootstrap, seconds=4.0, backoff_cap=0.5)
        connections = server.stats.connections
    assert summary["errors"]["critical_error"] >= 2
    assert summary["reconnects"] >= 2
    assert connections in (summary["reconnects"], summary["reconnects"] + 1)  # the deadline may cut the last wait
    assert connections <= 4.0 / 0.1  # bounded by backoff, never a tight loop
    records = read_topic(kafka_bootstrap, topic)
    assert len(records) == 1 == summary["quotes"]  # the replayed snapshot, identical each time, emitted once


def _raw_client(url: str) -> websocket.WebSocket:
    ws = websocket.create_connection(url, timeout=3)
    hello = decode_message(ws.recv()).packets
    assert hello[0].kind == "hello"
    return ws


def test_server_answers_flags_with_critical_error_and_bad_symbol_with_error():
    with feed(synthetic_symbols=3) as server:
        ws = _raw_client(server.url)
        ws.send(encode_packet("set_auth_token", ["unauthorized_user_token"]))
        ws.send(encode_packet("quote_create_session", ["qs_test"]))
        ws.send(encode_packet("quote_add_symbols", ["qs_test", "BINANCE:SOLUSDT", {"flags": ["force_permission"]}]))
        (packet,) = decode_message(ws.recv()).packets
        assert (packet.method, packet.params) == (
            "critical_error",
            ["qs_test", "invalid_parameters", "quote_add_symbols"],
        )
        ws.send(encode_packet("quote_add_symbols", ["qs_test", "NOPE:NOPE"]))
        (packet,) = decode_message(ws.recv()).packets
        assert packet.method == "qsd"
        assert packet.params[1] == {"n": "NOPE:NOPE", "s": "error", "errmsg": "no_such_symbol", "v": {}}
        ws.close()


def test_server_drops_a_client_that_does_not_echo_heartbeats():
    with feed(synthetic_symbols=3, heartbeat_interval=0.3, heartbeat_timeout=0.8) as server:
        ws = _raw_client(server.url)
        started = time.monotonic()
        heartbeats = 0
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            while time.monotonic() - started < 10:
                for packet in decode_message(ws.recv()).packets:
                    heartbeats += packet.kind == "heartbeat"
        elapsed = time.monotonic() - started
        assert server.stats.dropped_for_heartbeat == 1
    assert heartbeats >= 2
    assert 0.8 <= elapsed < 5.0


def test_server_rejects_a_bad_token_with_protocol_error_and_closes():
    with feed(synthetic_symbols=3, tokens=("good",)) as server:
        ws = _raw_client(server.url)
        ws.send(encode_packet("set_auth_token", ["bad"]))
        assert ws.recv() == frame('{"m":"protocol_error","p":["bad auth token"]}')
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            for _ in range(5):
                ws.recv()


def test_oversized_message_is_refused_before_it_is_read(tmp_path, make_topic, kafka_bootstrap):
    """A 300 KB message against max_message_size=100 KB: refused before it is decoded, then a reconnect."""
    big = encode_packet(
        "qsd", ["qs_rec", {"n": "BINANCE:SOLUSDT", "s": "ok", "v": {"lp": 142.5, "description": "x" * 300_000}}]
    )
    replay = tmp_path / "big.jsonl"
    replay.write_text(json.dumps({"direction": "server->client", "raw": big}) + "\n")
    topic = make_topic(1, LOG_APPEND)
    with feed(replay=replay, speed=0) as server:
        limited = produce(server, ["BINANCE:SOLUSDT"], topic, kafka_bootstrap, 2.0, max_message_size=100_000)
        unlimited = produce(server, ["BINANCE:SOLUSDT"], topic, kafka_bootstrap, 1.0)
    assert limited["errors"]["message_too_big"] >= 1 and limited["reconnects"] >= 1
    assert limited["quotes"] == 0
    assert unlimited["errors"] == {} and unlimited["quotes"] == 1  # the default limit (16 MiB) lets it through


def test_rate_limited_handshake_backs_off_long_then_streams(make_topic, kafka_bootstrap):
    """HTTP 429 on connect is rate limiting: the client waits between half the cap and the cap."""
    topic = make_topic(1, LOG_APPEND)
    with feed(
        synthetic_symbols=3, rate=300, packets_per_message=3, handshake_status=429, fault_connections=2
    ) as server:
        summary = produce(server, SYMBOLS, topic, kafka_bootstrap, 5.0, backoff_initial=0.01, backoff_cap=1.0)
        times = list(server.stats.handshake_times)
        rejected = server.stats.rejected_handshakes
    assert rejected == 2 and summary["errors"]["handshake_429"] == 2
    assert len(times) == 3
    assert all(b - a >= 0.45 for a, b in zip(times, times[1:], strict=False))  # not the 0.01 s first step
    assert summary["quotes"] > 30
    _assert_no_duplicates_no_gaps(read_topic(kafka_bootstrap, topic, expect=summary["quotes"]), summary)


def test_handshake_carries_browser_like_headers_and_the_configured_ones():
    from quoteflow.settings import ConnectionInfo
    from quoteflow.stream import client_config
    from quoteflow.tradingview.client import TradingViewClient

    info = ConnectionInfo(
        conn_id="tradingview_default",
        extra={"headers": {"Origin": "https://data.tradingview.com", "Accept-Language": "de-DE"}},
    )
    with feed(synthetic_symbols=3, rate=100) as server:
        config = client_config(server.url, SYMBOLS, info, poll_interval=0.05)
        TradingViewClient(config, lambda state, received_at: None).run(threading.Event(), time.monotonic() + 0.5)
        (headers,) = server.stats.request_headers
    assert headers["origin"] == "https://data.tradingview.com"
    assert headers["accept-language"] == "de-DE"
    assert headers["user-agent"].startswith("Mozilla/5.0")
    assert headers["cache-control"] == "no-cache" and headers["pragma"] == "no-cache"
