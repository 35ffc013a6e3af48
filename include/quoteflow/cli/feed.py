"""``quoteflow serve-feed``: the local TradingView-protocol feed server (replay, synthetic quotes and bars, faults)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from quoteflow.cli.common import stop_on_signals
from quoteflow.settings import ConfigError


def register(subparsers: Any) -> None:
    """Add ``serve-feed``."""
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
    feed.add_argument("--seed", type=int, help="random seed for a reproducible synthetic feed (and its bars)")
    feed.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="feed-wide fault, repeatable: outage:<after_s>:<duration_s> (cut all, 503 meanwhile), "
        "symbol-error:<SYMBOL> (chart symbol_error), not-entitled:<RES>[,<RES>] (series_error)",
    )
    feed.add_argument("--handshake-limit", metavar="N/SECONDS", help="at most N upgrades per SECONDS, beyond: 429")
    feed.add_argument(
        "--control-file", metavar="FILE", help="0600 file whose appended lines run: outage <s> | outage-end"
    )
    feed.add_argument("--du-interval", type=float, default=1.0, help="charts: seconds between forming-bar checks")
    feed.add_argument("--clock-speed", type=float, default=1.0, help="feed time runs this many times faster (tests)")
    feed.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the local feed server until interrupted."""
    from quoteflow.tradingview.feed.config import parse_fault, parse_handshake_limit
    from quoteflow.tradingview.feed_server import FeedConfig, FeedServer, FeedServerError

    try:
        faults: dict[str, Any] = {"outages": (), "symbol_errors": (), "not_entitled": ()}
        for spec in args.fault:
            for name, value in parse_fault(spec).items():
                faults[name] = faults[name] + value
        limit = parse_handshake_limit(args.handshake_limit) if args.handshake_limit else None
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
            handshake_limit=limit,
            control_file=args.control_file,
            du_interval=args.du_interval,
            clock_speed=args.clock_speed,
            **faults,
        )
    except FeedServerError as exc:
        raise ConfigError(str(exc)) from None
    server = FeedServer(config)
    stop = stop_on_signals()
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
                    "chart_series": stats.chart_series,
                    "du_sent": stats.du_sent,
                    "outage_drops": stats.outage_drops,
                    "refused_outage": stats.refused_outage,
                    "refused_rate_limited": stats.refused_rate_limited,
                }
            ),
            flush=True,
        )
    return 0
