"""Look up Airflow Connections at task run time and hand them to the library as plain values."""

from __future__ import annotations

from quoteflow.settings import ConfigError, ConnectionInfo


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
