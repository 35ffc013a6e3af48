"""What every DAG task does around its one job call: the Pipeline from the run's Params, and error translation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from quoteflow.settings import ELASTICSEARCH_CONN_ID, KAFKA_CONN_ID, ConfigError


def pipeline(
    params: Mapping[str, Any],
    *,
    kafka: bool = True,
    elasticsearch: bool = True,
    kafka_conn_id: str = KAFKA_CONN_ID,
    es_conn_id: str = ELASTICSEARCH_CONN_ID,
) -> Any:
    """The :class:`~quoteflow.jobs.Pipeline` a run's Params name; configs from the connections (at run time only)."""
    from _shared.connections import elasticsearch_args, kafka_config
    from quoteflow.elastic.bulk import RetryPolicy
    from quoteflow.jobs import Pipeline
    from quoteflow.settings import CONSUMER_GROUP, DLQ_TOPIC, INDEX_PREFIX, QUOTES_TOPIC

    budget = params.get("retry_budget_s")
    return Pipeline(
        kafka=kafka_config(kafka_conn_id) if kafka else {},
        es_args=elasticsearch_args(es_conn_id) if elasticsearch else None,
        topic=params.get("topic", QUOTES_TOPIC),
        dlq_topic=params.get("dlq_topic", DLQ_TOPIC),
        index_prefix=params.get("index_prefix", INDEX_PREFIX),
        group_id=params.get("group_id", CONSUMER_GROUP),
        retry=RetryPolicy(budget_s=float(budget)) if budget is not None else None,
        **{name: str(params[name]) for name in STREAM_PARAMS if name in params},
    )


# Params naming the bars and gaps streams, where a DAG has them ("" turns a stream off).
STREAM_PARAMS = ("bars_topic", "bars_index_prefix", "gaps_topic", "gaps_index_prefix")


@contextmanager
def config_errors_fail(*also: type[Exception]) -> Iterator[None]:
    """Turn a :class:`ConfigError` (and ``also``) into ``AirflowFailException``: retrying cannot fix configuration."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        yield
    except (ConfigError, *also) as exc:
        raise AirflowFailException(str(exc)) from exc
