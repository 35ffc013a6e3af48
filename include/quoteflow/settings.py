"""Names shared across the pipeline, and connection settings turned into client configs.

Hosts and secrets come from Airflow Connections. The DAGs look a connection up and hand
its fields here as plain values; the CLI reads the same ``AIRFLOW_CONN_<ID>`` JSON from the
environment (:func:`connection_from_env`), so both paths build identical clients.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

QUOTES_TOPIC = "quotes.tradingview"
DLQ_TOPIC = "quotes.tradingview.dlq"
INDEX_PREFIX = "quotes-tradingview-"
INDEX_PATTERN = "quotes-*"
TEMPLATE_NAME = "quotes"
DATA_VIEW_ID = "quotes"
CONSUMER_GROUP = "quoteflow-indexer"
DEFAULT_SYMBOLS = ("BINANCE:SOLUSDT", "BINANCE:BTCUSDT", "BINANCE:ETHUSDT")
TRADINGVIEW_URL = "wss://data.tradingview.com/socket.io/websocket"

KAFKA_CONN_ID = "kafka_default"
ELASTICSEARCH_CONN_ID = "elasticsearch_default"
KIBANA_CONN_ID = "kibana_default"
TRADINGVIEW_CONN_ID = "tradingview_default"


class ConfigError(ValueError):
    """Configuration that cannot work; the message names what to fix."""


@dataclass(frozen=True)
class ConnectionInfo:
    """The fields of an Airflow Connection that quoteflow uses, without Airflow."""

    conn_id: str
    conn_type: str | None = None
    host: str | None = None
    port: int | None = None
    schema: str | None = None
    login: str | None = None
    password: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_connection(cls, conn_id: str, conn: Any) -> ConnectionInfo:
        """Copy the fields quoteflow uses from an Airflow ``Connection`` (any object with its attributes)."""
        return cls(
            conn_id=conn_id,
            conn_type=conn.conn_type,
            host=conn.host,
            port=conn.port,
            schema=conn.schema,
            login=conn.login,
            password=conn.password,
            extra=conn.extra_dejson or {},
        )


def connection_from_env(conn_id: str, environ: Mapping[str, str] | None = None) -> ConnectionInfo | None:
    """Read ``AIRFLOW_CONN_<CONN_ID>`` (JSON form) from the environment; ``None`` when unset."""
    env = os.environ if environ is None else environ
    name = f"AIRFLOW_CONN_{conn_id.upper()}"
    raw = env.get(name)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        example = '{"conn_type": ..., "extra": {...}}'
        raise ConfigError(f"{name} is not JSON ({exc}); write it as '{example}'") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must be a JSON object")
    extra = data.get("extra") or {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name}: 'extra' is a string that is not JSON ({exc})") from None
    port = data.get("port")
    return ConnectionInfo(
        conn_id=conn_id,
        conn_type=data.get("conn_type"),
        host=data.get("host"),
        port=int(port) if port not in (None, "") else None,
        schema=data.get("schema"),
        login=data.get("login"),
        password=data.get("password"),
        extra=dict(extra),
    )


def kafka_config(extra: Mapping[str, Any] | None, *, conn_id: str = KAFKA_CONN_ID) -> dict[str, Any]:
    """A librdkafka config dict from a Kafka connection's ``extra``; requires ``bootstrap.servers``."""
    config = {str(k): v for k, v in (extra or {}).items()}
    servers = config.get("bootstrap.servers")
    if not servers or not isinstance(servers, str):
        raise ConfigError(
            f"connection {conn_id!r} has no 'bootstrap.servers' in its extra; "
            f"set e.g. AIRFLOW_CONN_{conn_id.upper()}="
            '\'{"conn_type":"kafka","extra":{"bootstrap.servers":"127.0.0.1:9092"}}\''
        )
    return config


def elasticsearch_url(info: ConnectionInfo) -> str:
    """``scheme://host:port`` of an Elasticsearch connection (scheme from ``schema``, default http)."""
    if not info.host:
        raise ConfigError(
            f"connection {info.conn_id!r} has no host; set e.g. "
            f'AIRFLOW_CONN_{info.conn_id.upper()}=\'{{"conn_type":"elasticsearch","host":"127.0.0.1","port":9200}}\''
        )
    if "://" in info.host:
        base = info.host.rstrip("/")
        return base if info.port is None else f"{base}:{info.port}"
    scheme = info.schema or "http"
    port = info.port or 9200
    return f"{scheme}://{info.host}:{port}"


def elasticsearch_client_args(info: ConnectionInfo) -> dict[str, Any]:
    """Keyword arguments for ``elasticsearch.Elasticsearch`` from a connection."""
    args: dict[str, Any] = {"hosts": [elasticsearch_url(info)]}
    if info.login and info.password:
        args["basic_auth"] = (info.login, info.password)
    for key in ("api_key", "verify_certs", "ca_certs", "request_timeout"):
        if key in info.extra:
            args[key] = info.extra[key]
    return args
