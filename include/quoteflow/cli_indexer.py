"""Indexer commands: ``setup``, ``index``, ``backfill``, ``reconcile`` and ``dlq`` (list / replay dead letters).

Hosts come from the same ``AIRFLOW_CONN_<ID>`` JSON the DAGs use (``kafka_default``,
``elasticsearch_default``, optional ``kibana_default``). Each command prints one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from quoteflow import settings
from quoteflow.settings import ConfigError

logger = logging.getLogger(__name__)


def _print(summary: dict[str, Any]) -> None:
    print(json.dumps(summary, separators=(",", ":"), sort_keys=True, default=str))
    sys.stdout.flush()


def _kafka(args: argparse.Namespace) -> dict[str, Any]:
    info = settings.connection_from_env(args.kafka_conn)
    if info is None:
        raise ConfigError(
            f"AIRFLOW_CONN_{args.kafka_conn.upper()} is not set; set it to "
            '\'{"conn_type":"kafka","extra":{"bootstrap.servers":"127.0.0.1:9092"}}\''
        )
    return settings.kafka_config(info.extra, conn_id=args.kafka_conn)


def _es(args: argparse.Namespace) -> Any:
    from elasticsearch import Elasticsearch

    info = settings.connection_from_env(args.es_conn)
    if info is None:
        raise ConfigError(
            f"AIRFLOW_CONN_{args.es_conn.upper()} is not set; set it to "
            '\'{"conn_type":"elasticsearch","host":"127.0.0.1","port":9200}\''
        )
    return Elasticsearch(**settings.elasticsearch_client_args(info))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic", default=settings.QUOTES_TOPIC, help="quotes topic (default %(default)s)")
    parser.add_argument("--dlq-topic", default=settings.DLQ_TOPIC, help="dead-letter topic (default %(default)s)")
    parser.add_argument("--index-prefix", default=settings.INDEX_PREFIX, help="index prefix (default %(default)s)")
    parser.add_argument("--group", default=settings.CONSUMER_GROUP, help="consumer group (default %(default)s)")
    parser.add_argument("--kafka-conn", default=settings.KAFKA_CONN_ID, help="Kafka connection id")
    parser.add_argument("--es-conn", default=settings.ELASTICSEARCH_CONN_ID, help="Elasticsearch connection id")
    parser.add_argument("--retry-budget", type=float, default=120.0, help="seconds of Elasticsearch retries per chunk")


def _retry(args: argparse.Namespace) -> Any:
    from quoteflow.elastic.bulk import RetryPolicy

    return RetryPolicy(budget_s=args.retry_budget, max_backoff_s=min(10.0, args.retry_budget))


def _reported(name: str, func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command; a runtime failure still prints one JSON line (``ok: false``) and exits 1."""
    from confluent_kafka import KafkaException

    from quoteflow.elastic.bulk import BulkError
    from quoteflow.kafka.dlq import DeadLetterError
    from quoteflow.kafka.reader import RangeReadError
    from quoteflow.kibana import KibanaError

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (BulkError, RangeReadError, DeadLetterError, KibanaError, KafkaException) as exc:
            logger.error("%s failed: %s", name, exc)
            _print({"command": name, "ok": False, "error": type(exc).__name__, "detail": str(exc)})
            return 1

    return run


def register(subparsers: Any) -> None:
    """Add the indexer subcommands to the top-level parser."""
    p = subparsers.add_parser("setup", help="create/align topics, index template and Kibana objects (idempotent)")
    _common(p)
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--retention-hours", type=float, default=72.0)
    p.add_argument("--dlq-retention-days", type=float, default=30.0)
    p.add_argument("--replication-factor", type=int, default=1)
    p.add_argument("--kibana-conn", default=settings.KIBANA_CONN_ID)
    p.add_argument("--kibana-timeout", type=float, default=120.0)
    p.set_defaults(func=_reported("setup", cmd_setup))

    p = subparsers.add_parser("index", help="index one window [start, end) of the quotes topic")
    _common(p)
    p.add_argument("--start", required=True, help="ISO-8601 window start (inclusive)")
    p.add_argument("--end", required=True, help="ISO-8601 window end (exclusive)")
    p.add_argument("--no-commit", action="store_true", help="do not move the group's committed offsets")
    p.set_defaults(func=_reported("index", cmd_index))

    p = subparsers.add_parser("backfill", help="re-index an offset or time range of one or more partitions")
    _common(p)
    p.add_argument("--partition", type=int, action="append", help="partition (repeatable; default all)")
    p.add_argument("--from-offset", type=int, help="first offset to re-index (inclusive)")
    p.add_argument("--to-offset", type=int, help="offset after the last one to re-index (exclusive)")
    p.add_argument("--from-time", help="ISO-8601 start (inclusive)")
    p.add_argument("--to-time", help="ISO-8601 end (exclusive)")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=_reported("backfill", cmd_backfill))

    p = subparsers.add_parser("reconcile", help="find (and with --repair, fill) holes between Kafka and ES")
    _common(p)
    p.add_argument("--repair", action="store_true")
    p.add_argument("--until", choices=("committed", "high"), default="committed")
    p.set_defaults(func=_reported("reconcile", cmd_reconcile))

    p = subparsers.add_parser("dlq", help="list dead letters, or replay them into the quotes topic")
    _common(p)
    p.add_argument("action", choices=("list", "replay"))
    p.add_argument("--reason", help="only dead letters with this error.reason")
    p.add_argument("--limit", type=int, default=50, help="list: show at most this many")
    p.set_defaults(func=_reported("dlq", cmd_dlq))


def cmd_setup(args: argparse.Namespace) -> int:
    """Create or align topics and the index template; import Kibana objects when kibana_default exists."""
    from quoteflow.elastic.template import ensure_template
    from quoteflow.kafka.admin import admin_client, dlq_topic_spec, ensure_topic, quotes_topic_spec
    from quoteflow.kibana import setup_kibana

    admin = admin_client(_kafka(args))
    hour_ms = 3600 * 1000
    topics = [
        ensure_topic(
            admin,
            quotes_topic_spec(
                args.topic, args.partitions, int(args.retention_hours * hour_ms), args.replication_factor
            ),
        ),
        ensure_topic(
            admin,
            dlq_topic_spec(
                args.dlq_topic, args.partitions, int(args.dlq_retention_days * 24 * hour_ms), args.replication_factor
            ),
        ),
    ]
    template = ensure_template(_es(args))
    kibana = setup_kibana(settings.connection_from_env(args.kibana_conn), timeout_s=args.kibana_timeout)
    changed = any(t.changed for t in topics) or template != "unchanged" or kibana.get("changed", False)
    _print(
        {
            "command": "setup",
            "changed": changed,
            "topics": {t.name: {"created": t.created, "changes": t.changes} for t in topics},
            "template": template,
            "kibana": kibana,
        }
    )
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """Index one window."""
    from quoteflow.indexer import index_window, parse_bound

    summary = index_window(
        _kafka(args),
        _es(args),
        parse_bound(args.start),
        parse_bound(args.end),
        topic=args.topic,
        dlq_topic=args.dlq_topic,
        index_prefix=args.index_prefix,
        group_id=args.group,
        retry=_retry(args),
        commit=not args.no_commit,
    )
    _print({"command": "index", **summary.to_dict()})
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    """Re-index an explicit range."""
    from quoteflow.backfill import backfill
    from quoteflow.indexer import parse_bound

    by_offsets = args.from_offset is not None or args.to_offset is not None
    by_time = args.from_time is not None or args.to_time is not None
    if by_offsets == by_time:
        raise ConfigError("give either --from-offset/--to-offset or --from-time/--to-time (both of the pair)")
    if by_offsets:
        if args.from_offset is None or args.to_offset is None:
            raise ConfigError("--from-offset and --to-offset go together")
        mode, start, end = "offsets", args.from_offset, args.to_offset
    else:
        if args.from_time is None or args.to_time is None:
            raise ConfigError("--from-time and --to-time go together")
        mode, start, end = "time", parse_bound(args.from_time), parse_bound(args.to_time)
    result = backfill(
        _kafka(args),
        None if args.dry_run else _es(args),
        mode=mode,
        start=start,
        end=end,
        partitions=args.partition,
        topic=args.topic,
        dlq_topic=args.dlq_topic,
        index_prefix=args.index_prefix,
        group_id=args.group,
        dry_run=args.dry_run,
        retry=_retry(args),
    )
    _print({"command": "backfill", **result})
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Compare Kafka with Elasticsearch; exit 1 if holes remain."""
    from quoteflow.reconcile import reconcile

    result = reconcile(
        _kafka(args),
        _es(args),
        repair=args.repair,
        topic=args.topic,
        dlq_topic=args.dlq_topic,
        index_prefix=args.index_prefix,
        group_id=args.group,
        until=args.until,
        retry=_retry(args),
    )
    _print({"command": "reconcile", **result})
    remaining = result.get("missing_after_repair", result["missing"])
    return 1 if remaining else 0


def cmd_dlq(args: argparse.Namespace) -> int:
    """List dead letters, or replay them (deduplicated by origin) into the quotes topic."""
    from quoteflow.kafka.dlq import list_dead_letters, replay_dead_letters

    if args.action == "list":
        result = list_dead_letters(_kafka(args), args.dlq_topic, reason=args.reason, limit=args.limit)
    else:
        result = replay_dead_letters(_kafka(args), args.dlq_topic, args.topic, reason=args.reason)
    _print({"command": f"dlq {args.action}", **result})
    return 0
