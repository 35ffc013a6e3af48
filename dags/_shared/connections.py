"""Look up Airflow Connections at task run time and hand them to the library as plain values.

Kafka configs come from the Kafka provider's hook, so a ``kafka`` connection behaves as that
provider's users expect: its ``extra`` is the librdkafka dict, dotted-path callbacks (``oauth_cb``,
``error_cb``, ...) resolve only when listed in ``[apache_kafka] callback_allowlist``, Amazon MSK IAM
and Google Managed Kafka get the provider's token callback, and the UI's Test button is the
provider's ``test_connection``. We take the hook's *config*, not its clients: :class:`_KafkaConfigHook`
overrides ``_get_client`` (the one method the provider's own producer, consumer and admin hooks
override) to return the config its ``get_conn`` built. Client factories would not fit the library,
which builds many clients from one config (a consumer per window and group, a producer with its own
delivery callbacks, an admin client) where the hooks build one cached client each and the consumer
hook subscribes where we ``assign()``; reading ``_build_config()`` directly would skip ``get_conn``.
Elasticsearch has no such hook fit (see :func:`elasticsearch_args`).
"""

from __future__ import annotations

from typing import Any

from quoteflow.settings import (
    ELASTICSEARCH_CONN_ID,
    KAFKA_CONN_ID,
    ConfigError,
    ConnectionInfo,
    elasticsearch_client_args,
)
from quoteflow.settings import kafka_config as _checked_kafka_config


def _not_defined(conn_id: str) -> ConfigError:
    return ConfigError(
        f"Airflow connection {conn_id!r} is not defined; create it in Admin → Connections "
        f"or set AIRFLOW_CONN_{conn_id.upper()} (JSON) in the environment"
    )


def connection_info(conn_id: str, *, required: bool = True) -> ConnectionInfo | None:
    """The Airflow Connection ``conn_id`` as a :class:`ConnectionInfo`; ``None`` if absent and not required."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        if not required:
            return None
        raise _not_defined(conn_id) from None
    return ConnectionInfo.from_connection(conn_id, conn)


def _required(conn_id: str) -> ConnectionInfo:
    info = connection_info(conn_id)
    assert info is not None  # required=True raises instead
    return info


def kafka_hook(conn_id: str = KAFKA_CONN_ID) -> Any:
    """The Kafka provider's hook of ``conn_id`` whose ``get_conn`` is the config dict (built once per hook)."""
    from airflow.providers.apache.kafka.hooks.base import KafkaBaseHook

    class _KafkaConfigHook(KafkaBaseHook):
        def _get_client(self, config: dict[str, Any]) -> dict[str, Any]:
            return dict(config)

    return _KafkaConfigHook(kafka_config_id=conn_id)


def kafka_config(conn_id: str = KAFKA_CONN_ID) -> dict[str, Any]:
    """The librdkafka config of the Kafka connection ``conn_id``, as the Kafka provider's hook builds it.

    Raises :class:`ConfigError` naming the connection when it is missing, has no ``bootstrap.servers``,
    or asks for a callback the allow-list refuses (the provider's message is kept).
    """
    from airflow.exceptions import AirflowNotFoundException

    try:
        config = kafka_hook(conn_id).get_conn
    except AirflowNotFoundException:
        raise _not_defined(conn_id) from None
    except ValueError as exc:
        # The provider says "config['bootstrap.servers'] must be provided."; ours names the connection.
        _checked_kafka_config(_required(conn_id).extra, conn_id=conn_id)
        raise ConfigError(f"Airflow connection {conn_id!r}: {exc}") from exc
    return _checked_kafka_config(config, conn_id=conn_id)


def elasticsearch_args(conn_id: str = ELASTICSEARCH_CONN_ID) -> dict[str, Any]:
    """Keyword arguments for ``elasticsearch.Elasticsearch`` from the connection ``conn_id``.

    Not through the provider's hooks: ``ElasticsearchPythonHook`` ignores connections, and
    ``ElasticsearchSQLHook`` builds its own client (no ``ca_certs`` file check, no node class that names
    the connection on a TLS or 401 failure), so the library's checked arguments are used instead.
    """
    return elasticsearch_client_args(_required(conn_id))
