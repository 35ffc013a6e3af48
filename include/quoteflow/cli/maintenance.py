"""``quoteflow maintenance indices|dlq``: delete indices past retention (or defer to ILM); how old the dead letters are.

Airflow's own metadata cleanup (``airflow db clean``) is the Airflow CLI's; the ``quotes_maintenance``
DAG runs all three daily.
"""

from __future__ import annotations

import argparse
from typing import Any

from quoteflow import jobs, settings
from quoteflow.cli.common import es_args_from_env, kafka_from_env, print_line, reported
from quoteflow.jobs import Pipeline


def register(subparsers: Any) -> None:
    """Add ``maintenance``."""
    p = subparsers.add_parser("maintenance", help="index retention (delete or ILM), dead-letter age report")
    p.add_argument("action", choices=("indices", "dlq"))
    p.add_argument("--retention-days", type=int, default=30, help="indices: keep this many whole days (default 30)")
    p.add_argument("--dry-run", action="store_true", help="indices: only list what would be deleted")
    p.add_argument("--no-ilm", action="store_true", help="indices: delete even where the cluster has ILM")
    p.add_argument("--index-prefix", default=settings.INDEX_PREFIX, help="daily quotes indices (default %(default)s)")
    p.add_argument("--bars-index-prefix", default=settings.BARS_INDEX_PREFIX, help="monthly bars indices")
    p.add_argument("--gaps-index-prefix", default=settings.GAPS_INDEX_PREFIX, help="monthly gaps indices")
    p.add_argument("--dlq-topic", default=settings.DLQ_TOPIC, help="dlq: the dead-letter topic (default %(default)s)")
    p.add_argument("--kafka-conn", default=settings.KAFKA_CONN_ID, help="Kafka connection id (dlq)")
    p.add_argument("--es-conn", default=settings.ELASTICSEARCH_CONN_ID, help="Elasticsearch connection id (indices)")
    p.set_defaults(func=reported("maintenance", run))


def run(args: argparse.Namespace) -> int:
    """One maintenance part; print its summary (exit 0: a report is not a verdict)."""
    if args.action == "indices":
        p = Pipeline(
            kafka={},
            es_args=es_args_from_env(args.es_conn),
            index_prefix=args.index_prefix,
            bars_index_prefix=args.bars_index_prefix,
            gaps_index_prefix=args.gaps_index_prefix,
        )
        result = jobs.retention(p, retention_days=args.retention_days, dry_run=args.dry_run, prefer_ilm=not args.no_ilm)
    else:
        result = jobs.dlq_ages(Pipeline(kafka=kafka_from_env(args.kafka_conn), dlq_topic=args.dlq_topic))
    print_line({"command": f"maintenance {args.action}", **result})
    return 0
