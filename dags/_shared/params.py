"""Params that several DAGs share, defined once so their defaults, checks and wording stay equal."""

from __future__ import annotations

from airflow.sdk import Param

from quoteflow.settings import CONSUMER_GROUP, DLQ_TOPIC, INDEX_PREFIX, QUOTES_TOPIC


def _name(default: str, title: str, description: str) -> Param:
    return Param(default, type="string", minLength=1, title=title, description=description)


def topic_param(description: str = "The Kafka topic the producer writes quotes to.") -> Param:
    """The quotes topic."""
    return _name(QUOTES_TOPIC, "Quotes topic", description)


def dlq_topic_param() -> Param:
    """The dead-letter topic."""
    return _name(DLQ_TOPIC, "Dead-letter topic", "Where invalid or rejected records go, with origin and reason.")


def index_prefix_param() -> Param:
    """The prefix of the daily quote indices."""
    return _name(INDEX_PREFIX, "Index prefix", "Documents go to <prefix>YYYY.MM.DD by @timestamp.")


def group_param(title: str, description: str) -> Param:
    """The indexer's consumer group, described from the point of view of the DAG that uses it."""
    return _name(CONSUMER_GROUP, title, description)
