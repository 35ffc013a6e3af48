"""Producer commands: ``serve-feed`` (the local TradingView stand-in) and ``produce`` (feed → Kafka).

Both are stable interfaces scripts depend on; ``produce`` prints one JSON summary line at exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any

from quoteflow.settings import (
    DEFAULT_SYMBOLS,
    KAFKA_CONN_ID,
    QUOTES_TOPIC,
    TRADINGVIEW_CONN_ID,
    TRADINGVIEW_URL,
    ConfigError,
    connection_from_env,
    kafka_config,
)

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add ``serve-feed`` and ``produce`` to the top-level parser."""
    feed = subparsers.add_parser("serve-feed", help="serve a local TradingView-protocol feed (replay or synthetic)")
    feed.add_argument("--host", default="127.0.0.1")
    feed.add_argument("--port", type=int, default=8765)
    mode = feed.add_mutually_exclusive_group(required=True)
    mode.add_argument("--replay", metavar="FILE", help="replay the server->client lines of a frames JSONL file")
    mode.add_argument("--synthetic", action="store_true", help="stream synthetic quotes")
    feed.add_argument("--speed", type=float, default=1.0, help="replay pace multiplier; 0 = as fast as possible")
    feed.add_argument("--loop", action="store_true", help="replay again from the start when done")
    feed.add_argument("--symbols", type=int, default=3, help="synthetic: number of symbols K")
    feed.add_argument("--rate", type=float, default=100.0, help="synthetic: updates/s per client; 0 = full speed")
    feed.add_argument("--packets-per-message", type=int, default=10)
    feed.add_argument("--heartbeat-interval", type=float, default=10.0)
    feed.add_argument("--heartbeat-timeout", type=float, default=30.0)
    feed.add_argument("--tokens", default="unauthorized_user_token", help="comma-separated accepted auth tokens")
    feed.add_argument("--drop-after", type=int, metavar="N", help="fault: drop the connection after N messages")
    feed.add_argument("--stall-after", type=int, metavar="N", help="fault: go silent (heartbeats too) after N")
    feed.add_argument("--garbage-every", type=int, metavar="N", help="fault: a garbage packet every N messages")
    feed.add_argument("--bad-length-every", type=int, metavar="N", help="fault: a bad length prefix every N messages")
    feed.add_argument("--fault-connections", type=int, metavar="M", help="faults only on the first M connections")
    feed.add_argument("--handshake-status", type=int, metavar="HTTP", help="fault: refuse handshakes (e.g. 429)")
    feed.add_argument("--seed", type=int, help="random seed for a reproducible synthetic feed")
    feed.set_defaults(func=serve_feed)

    produce = subparsers.add_parser("produce", help="stream TradingView quotes into Kafka")
    produce.add_argument("--url", default=TRADINGVIEW_URL)
    produce.add_argument(
        "--symbols",
        default=",".join(DEFAULT_SYMBOLS),
        help='comma-separated EXCHANGE:TICKER or =JSON specs, e.g. \'={"symbol":"BINANCE:SOLUSDT"},BINANCE:BTCUSDT\'',
    )
    produce.add_argument("--topic", default=QUOTES_TOPIC)
    produce.add_argument("--bootstrap", metavar="HOST:PORT", help=f"Kafka servers (else {KAFKA_CONN_ID} connection)")
    produce.add_argument("--max-seconds", type=float, help="stop cleanly after N seconds")
    produce.add_argument("--record", metavar="FILE", help="append every raw websocket message to a JSONL file")
    produce.add_argument("--watchdog-timeout", type=float)
    produce.add_argument("--backoff-initial", type=float)
    produce.add_argument("--backoff-cap", type=float)
    produce.add_argument("--auth-retry-delay", type=float)
    produce.add_argument("--stats-interval", type=float, default=30.0)
    produce.add_argument("--skip-topic-check", action="store_true", help="do not require an existing topic")
    produce.set_defaults(func=produce_quotes)


def serve_feed(args: argparse.Namespace) -> int:
    """Run the local feed server until interrupted."""
    from quoteflow.tradingview.feed_server import FeedConfig, FeedServer, FeedServerError

    try:
        config = FeedConfig(
            host=args.host,
            port=args.port,
            replay=args.replay,
            speed=args.speed,
            loop=args.loop,
            synthetic_symbols=args.symbols if args.synthetic else 0,
            rate=args.rate,
            packets_per_message=args.packets_per_message,
            tokens=tuple(t for t in args.tokens.split(",") if t),
            heartbeat_interval=args.heartbeat_interval,
            heartbeat_timeout=args.heartbeat_timeout,
            drop_after=args.drop_after,
            stall_after=args.stall_after,
            garbage_every=args.garbage_every,
            bad_length_every=args.bad_length_every,
            fault_connections=args.fault_connections,
            handshake_status=args.handshake_status,
            seed=args.seed,
        )
    except FeedServerError as exc:
        raise ConfigError(str(exc)) from None
    server = FeedServer(config)
    stop = threading.Event()
    _on_signals(stop)
    server.start()
    print(json.dumps({"listening": server.url}), flush=True)
    try:
        stop.wait()
    finally:
        server.stop()
        stats = server.stats
        print(
            json.dumps(
                {
                    "connections": stats.connections,
                    "messages_sent": stats.messages_sent,
                    "heartbeats_sent": stats.heartbeats_sent,
                    "heartbeats_echoed": stats.heartbeats_echoed,
                    "errors_sent": dict(stats.errors_sent),
                }
            ),
            flush=True,
        )
    return 0


def produce_quotes(args: argparse.Namespace) -> int:
    """Stream quotes to Kafka; print the JSON summary; 0 unless records were lost."""
    from quoteflow.kafka.quote_producer import DeliveryFailed
    from quoteflow.stream import ProducerRun, client_config, run_producer

    symbols = split_symbol_list(args.symbols)
    if args.bootstrap:
        kafka = {"bootstrap.servers": args.bootstrap}
    else:
        info = connection_from_env(KAFKA_CONN_ID)
        if info is None:
            raise ConfigError(f"no Kafka: pass --bootstrap HOST:PORT or set AIRFLOW_CONN_{KAFKA_CONN_ID.upper()}")
        kafka = kafka_config(info.extra, conn_id=KAFKA_CONN_ID)
    run = ProducerRun(
        client=client_config(
            args.url,
            symbols,
            connection_from_env(TRADINGVIEW_CONN_ID),
            record_path=args.record,
            watchdog_timeout=args.watchdog_timeout,
            backoff_initial=args.backoff_initial,
            backoff_cap=args.backoff_cap,
            auth_retry_delay=args.auth_retry_delay,
        ),
        kafka=kafka,
        topic=args.topic,
        max_seconds=args.max_seconds,
        stats_interval=args.stats_interval,
        check_topic=not args.skip_topic_check,
    )
    stop = threading.Event()
    _on_signals(stop)
    try:
        summary = run_producer(run, stop)
    except DeliveryFailed as exc:
        summary = {**getattr(exc, "summary", {}), "error": str(exc)}
        print(json.dumps(summary), flush=True)
        return 1
    print(json.dumps(summary), flush=True)
    return 0


def _on_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM ask for a clean stop instead of killing the process mid-flush."""

    def handler(signum: int, _frame: Any) -> None:
        logger.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":  # pragma: no cover - use python -m quoteflow
    sys.exit("run: python -m quoteflow serve-feed|produce ...")


def split_symbol_list(text: str) -> list[str]:
    """Split ``--symbols`` on the commas outside ``=``-JSON specs, whose own commas belong to them."""
    symbols: list[str] = []
    depth, in_string, escaped, start = 0, False, False, 0
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            symbols.append(text[start:i])
            start = i + 1
    symbols.append(text[start:])
    return [s.strip() for s in symbols if s.strip()]
