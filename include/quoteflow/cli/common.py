"""What every command shares: the connection and name flags, the Pipeline they make, the one JSON line."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from quoteflow import settings
from quoteflow.jobs import Pipeline
from quoteflow.settings import ConfigError

logger = logging.getLogger(__name__)


def print_line(summary: dict[str, Any]) -> None:
    """Print a command's summary as one line of JSON on stdout."""
    print(json.dumps(summary, separators=(",", ":"), sort_keys=True, default=str))
    sys.stdout.flush()


def _from_env(conn_id: str, example: str, alternative: str = "") -> settings.ConnectionInfo:
    info = settings.connection_from_env(conn_id)
    if info is None:
        raise ConfigError(f"AIRFLOW_CONN_{conn_id.upper()} is not set; set it to '{example}'{alternative}")
    return info


def kafka_from_env(conn_id: str, alternative: str = "") -> dict[str, Any]:
    """The librdkafka config of ``AIRFLOW_CONN_<conn_id>``; a :class:`ConfigError` with an example if unset."""
    info = _from_env(conn_id, '{"conn_type":"kafka","extra":{"bootstrap.servers":"127.0.0.1:9092"}}', alternative)
    return settings.kafka_config(info.extra, conn_id=conn_id)


def es_args_from_env(conn_id: str) -> dict[str, Any]:
    """``Elasticsearch(**args)`` of ``AIRFLOW_CONN_<conn_id>``; a :class:`ConfigError` with an example if unset."""
    info = _from_env(conn_id, '{"conn_type":"elasticsearch","host":"127.0.0.1","port":9200}')
    return settings.elasticsearch_client_args(info)


def kafka_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    """``--bootstrap HOST:PORT`` if given, else the Kafka connection of the environment."""
    if args.bootstrap:
        return {"bootstrap.servers": args.bootstrap}
    return kafka_from_env(settings.KAFKA_CONN_ID, " (or pass --bootstrap HOST:PORT)")


def delivered(job: Callable[[], dict[str, Any]], ok: Callable[[dict[str, Any]], bool] = lambda _: True) -> int:
    """Run a job that produces to Kafka and print its JSON summary: 0 if ``ok``, 1 if not or if records were lost."""
    from quoteflow.kafka.quote_producer import DeliveryFailed

    try:
        summary = job()
    except DeliveryFailed as exc:
        print(json.dumps({**getattr(exc, "summary", {}), "error": str(exc)}), flush=True)
        return 1
    print(json.dumps(summary), flush=True)
    return 0 if ok(summary) else 1


def add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    """The names and connections of the pipeline a command works on."""
    parser.add_argument("--topic", default=settings.QUOTES_TOPIC, help="quotes topic (default %(default)s)")
    parser.add_argument("--dlq-topic", default=settings.DLQ_TOPIC, help="dead-letter topic (default %(default)s)")
    parser.add_argument("--index-prefix", default=settings.INDEX_PREFIX, help="index prefix (default %(default)s)")
    parser.add_argument("--group", default=settings.CONSUMER_GROUP, help="consumer group (default %(default)s)")
    parser.add_argument("--bars-topic", default=settings.BARS_TOPIC, help="bars topic; '' turns bars off")
    parser.add_argument("--bars-index-prefix", default=settings.BARS_INDEX_PREFIX, help="bars index prefix")
    parser.add_argument("--gaps-topic", default=settings.GAPS_TOPIC, help="gap events topic; '' turns gaps off")
    parser.add_argument("--gaps-index-prefix", default=settings.GAPS_INDEX_PREFIX, help="gaps index prefix")
    parser.add_argument("--kafka-conn", default=settings.KAFKA_CONN_ID, help="Kafka connection id")
    parser.add_argument("--es-conn", default=settings.ELASTICSEARCH_CONN_ID, help="Elasticsearch connection id")
    parser.add_argument("--retry-budget", type=float, default=120.0, help="seconds of Elasticsearch retries per chunk")


def pipeline(args: argparse.Namespace, *, elasticsearch: bool = True) -> Pipeline:
    """The :class:`Pipeline` the flags name (Elasticsearch only if the command writes or reads it)."""
    from quoteflow.elastic.bulk import RetryPolicy

    return Pipeline(
        kafka=kafka_from_env(args.kafka_conn),
        es_args=es_args_from_env(args.es_conn) if elasticsearch else None,
        topic=args.topic,
        dlq_topic=args.dlq_topic,
        index_prefix=args.index_prefix,
        group_id=args.group,
        bars_topic=args.bars_topic,
        bars_index_prefix=args.bars_index_prefix,
        gaps_topic=args.gaps_topic,
        gaps_index_prefix=args.gaps_index_prefix,
        retry=RetryPolicy(budget_s=args.retry_budget, max_backoff_s=min(10.0, args.retry_budget)),
    )


def reported(name: str, func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command; a runtime failure still prints one JSON line (``ok: false``) and exits 1."""

    def run(args: argparse.Namespace) -> int:
        from confluent_kafka import KafkaException

        from quoteflow.elastic.bulk import BulkError
        from quoteflow.kafka.dlq import DeadLetterError
        from quoteflow.kafka.reader import RangeReadError
        from quoteflow.kibana import KibanaError

        try:
            return func(args)
        except (BulkError, RangeReadError, DeadLetterError, KibanaError, KafkaException) as exc:
            logger.error("%s failed: %s", name, exc)
            print_line({"command": name, "ok": False, "error": type(exc).__name__, "detail": str(exc)})
            return 1

    return run


def stop_on_signals() -> threading.Event:
    """An event that SIGINT and SIGTERM set: a clean stop instead of a kill mid-flush."""
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        logger.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
    return stop
