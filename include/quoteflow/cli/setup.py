"""``quoteflow setup``: create or align the topics (quotes, bars, gaps, DLQ), the index templates and Kibana objects."""

from __future__ import annotations

import argparse
from typing import Any

from quoteflow import jobs, settings
from quoteflow.cli.common import add_pipeline_flags, pipeline, print_line, reported


def register(subparsers: Any) -> None:
    """Add ``setup``."""
    p = subparsers.add_parser("setup", help="create/align topics, index templates and Kibana objects (idempotent)")
    add_pipeline_flags(p)
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--retention-hours", type=float, default=72.0)
    p.add_argument("--dlq-retention-days", type=float, default=30.0)
    p.add_argument("--replication-factor", type=int, default=1)
    p.add_argument("--kibana-conn", default=settings.KIBANA_CONN_ID)
    p.add_argument("--kibana-timeout", type=float, default=120.0)
    p.set_defaults(func=reported("setup", run))


def run(args: argparse.Namespace) -> int:
    """Topics, template, Kibana; one JSON line saying what changed."""
    topics = jobs.TopicSettings(args.partitions, args.retention_hours, args.dlq_retention_days, args.replication_factor)
    kibana = settings.connection_from_env(args.kibana_conn)
    print_line({"command": "setup", **jobs.setup(pipeline(args), topics, kibana, args.kibana_timeout)})
    return 0
