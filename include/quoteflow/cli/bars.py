"""``quoteflow bars``: a history-only fetch of TradingView bars into the bars topic; one JSON summary line."""

from __future__ import annotations

import argparse
from typing import Any

from quoteflow import jobs
from quoteflow.cli.common import delivered, kafka_from_flags, stop_on_signals
from quoteflow.cli.produce import split_symbol_list
from quoteflow.settings import (
    BARS_TOPIC,
    DEFAULT_HISTORY_BARS,
    DEFAULT_RESOLUTION,
    DEFAULT_SYMBOLS,
    KAFKA_CONN_ID,
    TRADINGVIEW_CONN_ID,
    TRADINGVIEW_URL,
    ConfigError,
    connection_from_env,
)


def register(subparsers: Any) -> None:
    """Add ``bars``."""
    bars = subparsers.add_parser(
        "bars", help="fetch TradingView bar history (no quotes) into the bars topic, then exit"
    )
    bars.add_argument("--url", default=TRADINGVIEW_URL)
    bars.add_argument("--symbols", default=",".join(DEFAULT_SYMBOLS), help="comma-separated EXCHANGE:TICKER or =JSON")
    bars.add_argument(
        "--resolution",
        action="append",
        help=f"bar resolution (1, 5, 60, 1D, ...; repeatable; default {DEFAULT_RESOLUTION})",
    )
    bars.add_argument("--count", type=int, default=DEFAULT_HISTORY_BARS, help="bars per series (default %(default)s)")
    bars.add_argument("--from", dest="start", type=int, metavar="EPOCH_S", help="range start (unix seconds)")
    bars.add_argument("--to", dest="end", type=int, metavar="EPOCH_S", help="range end (unix seconds; with --from)")
    bars.add_argument("--bars-topic", default=BARS_TOPIC)
    bars.add_argument("--bootstrap", metavar="HOST:PORT", help=f"Kafka servers (else {KAFKA_CONN_ID} connection)")
    bars.add_argument("--max-seconds", type=float, default=120.0, help="give up after N seconds (default 120)")
    bars.add_argument("--skip-topic-check", action="store_true", help="do not require an existing topic")
    bars.set_defaults(func=run)


def bar_range(start: int | None, end: int | None) -> str:
    """``--from``/``--to`` as a ``create_series`` range (``r,<from>:<to>``); both or neither."""
    if start is None and end is None:
        return ""
    if start is None or end is None or start >= end:
        raise ConfigError(f"--from and --to go together, with from < to (unix seconds); got {start!r} and {end!r}")
    return f"r,{start}:{end}"


def run(args: argparse.Namespace) -> int:
    """Fetch the history; print the JSON summary; 0 once every series completed, 1 on a timeout or lost records."""
    return delivered(
        lambda: jobs.bars(
            jobs.Pipeline(kafka=kafka_from_flags(args), bars_topic=args.bars_topic),
            url=args.url,
            symbols=split_symbol_list(args.symbols),
            resolutions=args.resolution or [DEFAULT_RESOLUTION],
            count=args.count,
            bar_range=bar_range(args.start, args.end),
            tradingview=connection_from_env(TRADINGVIEW_CONN_ID),
            max_seconds=args.max_seconds,
            check_topic=not args.skip_topic_check,
            stop=stop_on_signals(),
        ),
        ok=lambda summary: summary.get("stopped_by") == "history_complete",
    )
