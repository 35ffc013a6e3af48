"""``quoteflow dlq list|replay``: look at the dead letters, or re-produce them into the quotes topic."""

from __future__ import annotations

import argparse
from typing import Any

from quoteflow import jobs
from quoteflow.cli.common import add_pipeline_flags, pipeline, print_line, reported


def register(subparsers: Any) -> None:
    """Add ``dlq``."""
    p = subparsers.add_parser("dlq", help="list dead letters, or replay them into the quotes topic")
    add_pipeline_flags(p)
    p.add_argument("action", choices=("list", "replay"))
    p.add_argument("--reason", help="only dead letters with this error.reason")
    p.add_argument("--limit", type=int, default=50, help="list: show at most this many")
    p.set_defaults(func=reported("dlq", run))


def run(args: argparse.Namespace) -> int:
    """List, or replay (each origin once, never twice); print the summary."""
    p = pipeline(args, elasticsearch=False)
    if args.action == "list":
        result = jobs.dlq_list(p, reason=args.reason, limit=args.limit)
    else:
        result = jobs.dlq_replay(p, reason=args.reason)
    print_line({"command": f"dlq {args.action}", **result})
    return 0
