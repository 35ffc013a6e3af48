"""``quoteflow backfill``: re-index an offset or time range of some partitions of one stream, committing nothing."""

from __future__ import annotations

import argparse
from typing import Any

from quoteflow import jobs
from quoteflow.cli.common import add_pipeline_flags, pipeline, print_line, reported
from quoteflow.settings import ConfigError


def register(subparsers: Any) -> None:
    """Add ``backfill``."""
    p = subparsers.add_parser("backfill", help="re-index an offset or time range of one or more partitions")
    add_pipeline_flags(p)
    p.add_argument("--partition", type=int, action="append", help="partition (repeatable; default all)")
    p.add_argument("--from-offset", type=int, help="first offset to re-index (inclusive)")
    p.add_argument("--to-offset", type=int, help="offset after the last one to re-index (exclusive)")
    p.add_argument("--from-time", help="ISO-8601 start (inclusive)")
    p.add_argument("--to-time", help="ISO-8601 end (exclusive)")
    p.add_argument("--stream", choices=("quotes", "bars", "gaps"), default="quotes", help="whose topic to re-read")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=reported("backfill", run))


def request(args: argparse.Namespace) -> tuple[str, Any, Any]:
    """``(mode, start, end)`` from the flags: one complete pair, of offsets or of times."""
    by_offsets = args.from_offset is not None or args.to_offset is not None
    by_time = args.from_time is not None or args.to_time is not None
    if by_offsets == by_time:
        raise ConfigError("give either --from-offset/--to-offset or --from-time/--to-time (both of the pair)")
    if by_offsets:
        if args.from_offset is None or args.to_offset is None:
            raise ConfigError("--from-offset and --to-offset go together")
        return "offsets", args.from_offset, args.to_offset
    if args.from_time is None or args.to_time is None:
        raise ConfigError("--from-time and --to-time go together")
    return "time", args.from_time, args.to_time


def run(args: argparse.Namespace) -> int:
    """Re-index the range (or, with --dry-run, only resolve it); print the summary."""
    mode, start, end = request(args)
    p = pipeline(args, elasticsearch=not args.dry_run)
    result = jobs.backfill(
        p, mode=mode, start=start, end=end, partitions=args.partition, dry_run=args.dry_run, stream=args.stream
    )
    print_line({"command": "backfill", **result})
    return 0
