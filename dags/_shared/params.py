"""Params that several DAGs share, defined once so their defaults, checks and wording stay equal."""

from __future__ import annotations

from airflow.sdk import Param

from quoteflow.settings import (
    BARS_INDEX_PREFIX,
    BARS_TOPIC,
    CONSUMER_GROUP,
    DLQ_TOPIC,
    GAPS_INDEX_PREFIX,
    GAPS_TOPIC,
    INDEX_PREFIX,
    QUOTES_TOPIC,
)


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


def bars_topic_param(description: str = "The Kafka topic of the bars stream; empty turns the stream off.") -> Param:
    """The bars topic; empty is allowed and turns the stream off."""
    return Param(BARS_TOPIC, type="string", title="Bars topic", description=description)


def gaps_topic_param(description: str = "The Kafka topic of the gap events; empty turns the stream off.") -> Param:
    """The gap events' topic; empty is allowed and turns the stream off."""
    return Param(GAPS_TOPIC, type="string", title="Gaps topic", description=description)


def stream_params(*, index_prefixes: bool = True) -> dict[str, Param]:
    """The bars and gaps streams' topics (and, for the DAGs that write or read documents, index prefixes)."""
    params = {"bars_topic": bars_topic_param(), "gaps_topic": gaps_topic_param()}
    if index_prefixes:
        params["bars_index_prefix"] = _name(
            BARS_INDEX_PREFIX, "Bars index prefix", "Bar documents go to <prefix>YYYY.MM by start."
        )
        params["gaps_index_prefix"] = _name(
            GAPS_INDEX_PREFIX, "Gaps index prefix", "Gap documents go to <prefix>YYYY.MM by start."
        )
    return params
