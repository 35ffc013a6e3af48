"""``quoteflow index``: one window ``[start, end)``, through the same three steps as the quotes_indexer DAG."""

from __future__ import annotations

import argparse
from typing import Any

from quoteflow import jobs
from quoteflow.cli.common import add_pipeline_flags, pipeline, print_line, reported
from quoteflow.indexer import parse_bound


def register(subparsers: Any) -> None:
    """Add ``index``."""
    p = subparsers.add_parser("index", help="index one window [start, end) of the quotes, bars and gaps topics")
    add_pipeline_flags(p)
    p.add_argument("--start", required=True, help="ISO-8601 window start (inclusive)")
    p.add_argument("--end", required=True, help="ISO-8601 window end (exclusive)")
    p.add_argument("--no-commit", action="store_true", help="do not move the group's committed offsets")
    p.set_defaults(func=reported("index", run))


def run(args: argparse.Namespace) -> int:
    """Index one window; print its summary."""
    start, end = parse_bound(args.start), parse_bound(args.end)
    print_line({"command": "index", **jobs.index_window(pipeline(args), start, end, commit=not args.no_commit)})
    return 0
