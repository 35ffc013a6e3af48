"""The streams the indexer covers — quotes, bars, gaps — and the names a job works on, as one value.

A :class:`Stream` is one Kafka topic and the index prefix its documents go to; :class:`Names` holds
the streams of a job with the dead-letter topic and the consumer group they share. The indexer,
backfill and reconcile take one ``Names`` instead of four separate names, and find each offset
range's stream by its topic. ``quoteflow.jobs.Pipeline.names`` builds it from a pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from quoteflow.settings import CONSUMER_GROUP, DLQ_TOPIC, INDEX_PREFIX, QUOTES_TOPIC, ConfigError


class Kind(StrEnum):
    """What a stream carries; it decides the document shape, the index period and the write mode."""

    QUOTES = "quotes"  # _id = topic-partition-offset, daily indices
    BARS = "bars"  # _id = symbol-resolution-start, monthly indices, external versions (newest offset wins)
    GAPS = "gaps"  # _id = gap_id, monthly indices


@dataclass(frozen=True)
class Stream:
    """One topic and the index prefix its documents go to."""

    kind: Kind
    topic: str
    index_prefix: str

    @property
    def versioned(self) -> bool:
        """True when a document's version is its record's offset (bars: a replay never overwrites a newer bar)."""
        return self.kind is Kind.BARS

    @property
    def required(self) -> bool:
        """The quotes topic must exist; a missing bars or gaps topic is skipped (logged) so quotes keep flowing."""
        return self.kind is Kind.QUOTES


@dataclass(frozen=True)
class Names:
    """The streams of a job (at most one per kind), the dead-letter topic and the consumer group they share."""

    streams: tuple[Stream, ...]
    dlq_topic: str = DLQ_TOPIC
    group_id: str = CONSUMER_GROUP

    def __post_init__(self) -> None:
        from quoteflow.elastic.documents import check_index_prefix

        if not self.streams:
            raise ConfigError("a job needs at least one stream (the quotes topic)")
        kinds = [s.kind for s in self.streams]
        topics = [s.topic for s in self.streams]
        if len(set(kinds)) != len(kinds):
            raise ConfigError(f"one stream per kind, got {kinds}")
        if len(set(topics)) != len(topics) or self.dlq_topic in topics:
            raise ConfigError(
                f"the quotes, bars, gaps and dead-letter topics must differ, got {topics + [self.dlq_topic]}"
            )
        for stream in self.streams:
            if not stream.topic:
                raise ConfigError(f"the {stream.kind} topic is empty")
            check_index_prefix(stream.index_prefix)
        if not self.group_id:
            raise ConfigError("the consumer group id is empty")

    @classmethod
    def quotes_only(
        cls,
        topic: str = QUOTES_TOPIC,
        index_prefix: str = INDEX_PREFIX,
        dlq_topic: str = DLQ_TOPIC,
        group_id: str = CONSUMER_GROUP,
    ) -> Names:
        """Names for the quotes stream alone."""
        return cls((Stream(Kind.QUOTES, topic, index_prefix),), dlq_topic, group_id)

    @classmethod
    def resolve(cls, names: Names | None, legacy: Mapping[str, Any]) -> Names:
        """``names``, or quotes-only names from the older keywords (topic, dlq_topic, index_prefix, group_id).

        The keywords are kept for callers not moved to ``names`` yet; giving both is refused.
        """
        unknown = sorted(set(legacy) - {"topic", "dlq_topic", "index_prefix", "group_id"})
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
        if names is not None:
            if legacy:
                raise TypeError(f"pass either names or {sorted(legacy)}, not both")
            return names
        return cls.quotes_only(**{k: str(v) for k, v in legacy.items()})

    def stream(self, topic: str) -> Stream:
        """The stream of ``topic``; :class:`ConfigError` for a topic this job does not cover."""
        for stream in self.streams:
            if stream.topic == topic:
                return stream
        raise ConfigError(f"topic {topic!r} is none of this job's streams ({', '.join(self.topics)})")

    def of_kind(self, kind: Kind | str) -> Stream | None:
        """The stream of ``kind``, or ``None`` when this job has none."""
        for stream in self.streams:
            if stream.kind == kind:
                return stream
        return None

    def only(self, kind: Kind | str) -> Names:
        """These names narrowed to the stream of ``kind`` (:class:`ConfigError` if there is none)."""
        stream = self.of_kind(kind)
        if stream is None:
            raise ConfigError(f"no {kind} stream here; its topic is unset (streams: {', '.join(self.topics)})")
        return Names((stream,), self.dlq_topic, self.group_id)

    @property
    def topics(self) -> list[str]:
        """The streams' topics, in order."""
        return [s.topic for s in self.streams]
