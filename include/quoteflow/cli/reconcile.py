"""``quoteflow reconcile``: compare Kafka with ES for every stream, list (with --repair, fill) holes; cross-check."""

from __future__ import annotations

import argparse
from typing import Any

from quoteflow import jobs
from quoteflow.cli.common import add_pipeline_flags, pipeline, print_line, reported


def register(subparsers: Any) -> None:
    """Add ``reconcile``."""
    p = subparsers.add_parser("reconcile", help="find (and with --repair, fill) holes between Kafka and ES")
    add_pipeline_flags(p)
    p.add_argument("--repair", action="store_true")
    p.add_argument("--until", choices=("committed", "high"), default="committed")
    p.add_argument(
        "--recent-hours", type=float, default=3.0, help="bars and gaps: check the records of this span (0: all)"
    )
    p.add_argument(
        "--cross-check-hours", type=float, default=2.0, help="ticks against the closed bars of this span (0: off)"
    )
    p.set_defaults(func=reported("reconcile", run))


def run(args: argparse.Namespace) -> int:
    """Print the report; exit 1 if holes remain (the job's verdict)."""
    result = jobs.reconcile(
        pipeline(args),
        repair=args.repair,
        until=args.until,
        cross_check_hours=args.cross_check_hours,
        recent_hours=args.recent_hours,
    )
    print_line({"command": "reconcile", **result})
    return 0 if result["ok"] else 1
