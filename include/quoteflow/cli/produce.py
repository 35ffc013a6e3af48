"""``quoteflow produce``: stream TradingView quotes into Kafka; one JSON summary line at exit."""

from __future__ import annotations

import argparse
from typing import Any

from quoteflow import jobs
from quoteflow.cli.common import delivered, kafka_from_flags, stop_on_signals
from quoteflow.settings import (
    BARS_TOPIC,
    DEFAULT_HISTORY_BARS,
    DEFAULT_SYMBOLS,
    GAPS_TOPIC,
    KAFKA_CONN_ID,
    QUOTES_TOPIC,
    TRADINGVIEW_CONN_ID,
    TRADINGVIEW_URL,
    connection_from_env,
)


def register(subparsers: Any) -> None:
    """Add ``produce``."""
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
    produce.add_argument("--shard", help="this connection's shard id (stats, summary, a --record file of its own)")
    produce.add_argument("--start-delay", type=float, default=0.0, metavar="S", help="wait S seconds, then connect")
    produce.add_argument(
        "--bar-resolution",
        action="append",
        metavar="RES",
        help="also stream bars at this resolution (1, 5, 60, 1D ...; repeatable; default none = bars off)",
    )
    produce.add_argument("--bar-symbols", help="symbols to stream bars for (default: all of --symbols)")
    produce.add_argument(
        "--history-bars", type=int, default=DEFAULT_HISTORY_BARS, help="bars of history on every connect"
    )
    produce.add_argument("--bars-topic", default=BARS_TOPIC)
    produce.add_argument("--gaps-topic", default=GAPS_TOPIC)
    produce.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Stream quotes to Kafka; print the JSON summary; 0 unless records were lost."""
    return delivered(
        lambda: jobs.produce(
            jobs.Pipeline(
                kafka=kafka_from_flags(args), topic=args.topic, bars_topic=args.bars_topic, gaps_topic=args.gaps_topic
            ),
            url=args.url,
            symbols=split_symbol_list(args.symbols),
            tradingview=connection_from_env(TRADINGVIEW_CONN_ID),
            max_seconds=args.max_seconds,
            stats_interval=args.stats_interval,
            check_topic=not args.skip_topic_check,
            record_path=args.record,
            stop=stop_on_signals(),
            shard=args.shard,
            start_delay_s=args.start_delay,
            bar_resolutions=args.bar_resolution or (),
            bar_symbols=split_symbol_list(args.bar_symbols) if args.bar_symbols else None,
            history_bars=args.history_bars,
            watchdog_timeout=args.watchdog_timeout,
            backoff_initial=args.backoff_initial,
            backoff_cap=args.backoff_cap,
            auth_retry_delay=args.auth_retry_delay,
        )
    )


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
