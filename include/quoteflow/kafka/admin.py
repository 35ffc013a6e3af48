"""Topic admin: create the quotes, bars, gaps and dead-letter topics, or bring an existing topic's config in line.

The indexer turns time windows into offsets with ``offsets_for_times``; that is only sound when
the broker stamps records itself (``message.timestamp.type=LogAppendTime``), so timestamps only
grow within a partition. :func:`require_log_append_time` refuses to work on any other topic.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from quoteflow.kafka.clients import admin_client
from quoteflow.settings import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["admin_client", "check_topic", "check_topics", "ensure_topic", "require_log_append_time"]

ADMIN_TIMEOUT_S = 15.0
TIMESTAMP_TYPE_KEY = "message.timestamp.type"
LOG_APPEND_TIME = "LogAppendTime"


class TopicConfigError(ConfigError):
    """A topic exists with a configuration quoteflow cannot work with; the message says how to fix it."""


@dataclass(frozen=True)
class TopicSpec:
    """What a topic should look like: partition count and the configs quoteflow sets explicitly."""

    name: str
    partitions: int
    replication_factor: int = 1
    config: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("topic name is empty")
        if self.partitions < 1:
            raise ConfigError(f"topic {self.name!r}: partitions must be >= 1, got {self.partitions}")
        if self.replication_factor < 1:
            raise ConfigError(f"topic {self.name!r}: replication factor must be >= 1, got {self.replication_factor}")


@dataclass
class TopicResult:
    """What :func:`ensure_topic` did: ``created``, or the list of changes made to an existing topic."""

    name: str
    created: bool = False
    changes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when the topic was created or altered."""
        return self.created or bool(self.changes)


def quotes_topic_spec(name: str, partitions: int, retention_ms: int, replication_factor: int = 1) -> TopicSpec:
    """The quotes topic: LogAppendTime timestamps (the indexer relies on them) and the given retention."""
    return TopicSpec(
        name,
        partitions,
        replication_factor,
        {TIMESTAMP_TYPE_KEY: LOG_APPEND_TIME, "retention.ms": str(int(retention_ms)), "cleanup.policy": "delete"},
    )


def bars_topic_spec(name: str, partitions: int, retention_ms: int, replication_factor: int = 1) -> TopicSpec:
    """The bars topic: like the quotes topic (LogAppendTime: the indexer windows it the same way)."""
    return quotes_topic_spec(name, partitions, retention_ms, replication_factor)


def gaps_topic_spec(name: str, retention_ms: int, replication_factor: int = 1) -> TopicSpec:
    """The gaps topic: LogAppendTime like the quotes; one partition (a few events a day, read in order)."""
    return quotes_topic_spec(name, 1, retention_ms, replication_factor)


def dlq_topic_spec(name: str, partitions: int, retention_ms: int, replication_factor: int = 1) -> TopicSpec:
    """The dead-letter topic: kept longer than the quotes so operators have time to look and replay."""
    return TopicSpec(
        name, partitions, replication_factor, {"retention.ms": str(int(retention_ms)), "cleanup.policy": "delete"}
    )


def _topic_partitions(admin: Any, name: str) -> int | None:
    meta = admin.list_topics(topic=name, timeout=ADMIN_TIMEOUT_S)
    topic = meta.topics.get(name)
    if topic is None or topic.error is not None:
        return None
    return len(topic.partitions)


def describe_topic_config(admin: Any, name: str) -> dict[str, str]:
    """The effective configuration of topic ``name`` (all keys, defaults included)."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    resource = ConfigResource(ResourceType.TOPIC, name)
    futures = admin.describe_configs([resource], request_timeout=ADMIN_TIMEOUT_S)
    entries = futures[resource].result(timeout=ADMIN_TIMEOUT_S)
    return {key: entry.value for key, entry in entries.items()}


def ensure_topic(admin: Any, spec: TopicSpec) -> TopicResult:
    """Create topic ``spec.name``, or align an existing one's partitions (up only) and configs; log each change."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, NewTopic
    from confluent_kafka.error import KafkaException

    result = TopicResult(spec.name)
    existing = _topic_partitions(admin, spec.name)
    if existing is None:
        new = NewTopic(spec.name, spec.partitions, spec.replication_factor, config=dict(spec.config))
        try:
            admin.create_topics([new], request_timeout=ADMIN_TIMEOUT_S)[spec.name].result(timeout=ADMIN_TIMEOUT_S)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
            existing = _topic_partitions(admin, spec.name)  # someone else created it meanwhile
        else:
            result.created = True
            logger.info("topic %s created: %s partitions, config %s", spec.name, spec.partitions, dict(spec.config))
            return result
    assert existing is not None
    if existing < spec.partitions:
        admin.create_partitions([NewPartitions(spec.name, spec.partitions)], request_timeout=ADMIN_TIMEOUT_S)[
            spec.name
        ].result(timeout=ADMIN_TIMEOUT_S)
        result.changes.append(f"partitions {existing} -> {spec.partitions}")
    elif existing > spec.partitions:
        logger.warning(
            "topic %s has %s partitions, more than the %s asked for; Kafka cannot remove partitions, keeping %s",
            spec.name,
            existing,
            spec.partitions,
            existing,
        )
    current = describe_topic_config(admin, spec.name)
    wanted = {k: v for k, v in spec.config.items() if current.get(k) != v}
    if wanted:
        resource = ConfigResource(
            "topic",
            spec.name,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in sorted(wanted.items())
            ],
        )
        admin.incremental_alter_configs([resource], request_timeout=ADMIN_TIMEOUT_S)[resource].result(
            timeout=ADMIN_TIMEOUT_S
        )
        result.changes.extend(f"{k}: {current.get(k)!r} -> {v!r}" for k, v in sorted(wanted.items()))
    if result.changes:
        logger.info("topic %s aligned: %s", spec.name, "; ".join(result.changes))
    else:
        logger.info("topic %s already as wanted: nothing changed", spec.name)
    return result


def require_log_append_time(admin: Any, topic: str) -> None:
    """Raise :class:`TopicConfigError` unless ``topic`` exists and uses LogAppendTime timestamps."""
    if _topic_partitions(admin, topic) is None:
        raise TopicConfigError(f"topic {topic!r} does not exist; run `quoteflow setup` (or quotes_setup)")
    value = describe_topic_config(admin, topic).get(TIMESTAMP_TYPE_KEY)
    if value != LOG_APPEND_TIME:
        raise _not_log_append_time(topic, value)


def _not_log_append_time(topic: str, value: str | None) -> TopicConfigError:
    return TopicConfigError(
        f"topic {topic!r} has {TIMESTAMP_TYPE_KEY}={value}; the indexer maps time windows to offsets and needs "
        f"{LOG_APPEND_TIME}. Fix: run the quotes_setup DAG (or `quoteflow setup`), or "
        f"kafka-configs --alter --entity-type topics --entity-name {topic} "
        f"--add-config {TIMESTAMP_TYPE_KEY}={LOG_APPEND_TIME}"
    )


def check_topic(config: Mapping[str, Any], topic: str) -> int | None:
    """Refuse (:class:`TopicConfigError`, naming the fix) unless ``topic`` exists with LogAppendTime timestamps.

    Returns the topic's ``max.message.bytes`` (``None`` if the broker does not say), so a producer
    can keep its batches under it.
    """
    admin = admin_client(config)
    require_log_append_time(admin, topic)
    value = describe_topic_config(admin, topic).get("max.message.bytes")
    return int(value) if value and value.isdigit() else None


def check_topics(config: Mapping[str, Any], topics: Mapping[str, bool]) -> list[str]:
    """Of ``{topic: required}``, the topics that exist with LogAppendTime, checked with one admin request.

    A missing required topic, or any topic with another timestamp type, is refused
    (:class:`TopicConfigError`, naming the fix); a missing optional topic is left out, with a warning.
    """
    from confluent_kafka.admin import ConfigResource, ResourceType

    admin = admin_client(config)
    meta = admin.list_topics(timeout=ADMIN_TIMEOUT_S)
    present = []
    for topic, required in topics.items():
        info = meta.topics.get(topic)
        if info is not None and info.error is None:
            present.append(topic)
        elif required:
            raise TopicConfigError(f"topic {topic!r} does not exist; run `quoteflow setup` (or quotes_setup)")
        else:
            logger.warning(
                "topic %s does not exist: its stream is skipped; run `quoteflow setup` (or quotes_setup) to create it",
                topic,
            )
    if not present:
        return present
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in present]
    futures = admin.describe_configs(resources, request_timeout=ADMIN_TIMEOUT_S)
    for resource, topic in zip(resources, present, strict=True):
        entries = futures[resource].result(timeout=ADMIN_TIMEOUT_S)
        entry = entries.get(TIMESTAMP_TYPE_KEY)
        value = entry.value if entry is not None else None
        if value != LOG_APPEND_TIME:
            raise _not_log_append_time(topic, value)
    return present
