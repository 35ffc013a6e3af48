"""Look up Airflow Connections at task run time and hand them to the library as plain values."""

from __future__ import annotations

from typing import Any

from quoteflow.settings import (
    ELASTICSEARCH_CONN_ID,
    KAFKA_CONN_ID,
    ConfigError,
    ConnectionInfo,
    elasticsearch_client_args,
)
from quoteflow.settings import kafka_config as _kafka_config


def connection_info(conn_id: str, *, required: bool = True) -> ConnectionInfo | None:
    """The Airflow Connection ``conn_id`` as a :class:`ConnectionInfo`; ``None`` if absent and not required."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        if not required:
            return None
        raise ConfigError(
            f"Airflow connection {conn_id!r} is not defined; create it in Admin → Connections "
            f"or set AIRFLOW_CONN_{conn_id.upper()} (JSON) in the environment"
        ) from None
    return ConnectionInfo.from_connection(conn_id, conn)


def _required(conn_id: str) -> ConnectionInfo:
    info = connection_info(conn_id)
    assert info is not None  # required=True raises instead
    return info


def kafka_config(conn_id: str = KAFKA_CONN_ID) -> dict[str, Any]:
    """The librdkafka config dict of the Kafka connection ``conn_id``."""
    return _kafka_config(_required(conn_id).extra, conn_id=conn_id)


def elasticsearch_args(conn_id: str = ELASTICSEARCH_CONN_ID) -> dict[str, Any]:
    """Keyword arguments for ``elasticsearch.Elasticsearch`` from the connection ``conn_id``."""
    return elasticsearch_client_args(_required(conn_id))
