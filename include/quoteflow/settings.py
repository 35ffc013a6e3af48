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
BARS_TOPIC = "bars.tradingview"
BARS_INDEX_PREFIX = "bars-tradingview-"
BARS_INDEX_PATTERN = "bars-*"
BARS_TEMPLATE_NAME = "bars"
GAPS_TOPIC = "gaps.tradingview"
GAPS_INDEX_PREFIX = "gaps-tradingview-"
GAPS_INDEX_PATTERN = "gaps-*"
GAPS_TEMPLATE_NAME = "gaps"
DEFAULT_RESOLUTION = "1"
DEFAULT_HISTORY_BARS = 300
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
    """Keyword arguments for ``elasticsearch.Elasticsearch`` from a connection, checked before any request.

    Supports ``https`` with ``extra.ca_certs`` (a PEM file) and ``extra.verify_certs``, basic auth from
    ``login``/``password`` or ``extra.api_key`` (the encoded key, or ``[id, key]``), and
    ``extra.request_timeout``. The client's node class turns an unverifiable certificate or an HTTP 401
    into an :class:`~quoteflow.elastic.connect.ElasticsearchAccessError` naming this connection.
    """
    from quoteflow.elastic.connect import node_class

    url = elasticsearch_url(info)
    where = f"connection {info.conn_id!r}"
    args: dict[str, Any] = {"hosts": [url]}
    extra = info.extra
    api_key = extra.get("api_key")
    credentials = "no credentials"
    if info.login and info.password:
        if api_key:
            raise ConfigError(f"{where} has both login/password and extra.api_key; keep one of them")
        args["basic_auth"] = (info.login, info.password)
        credentials = f"basic auth as user {info.login!r}"
    if api_key:
        if isinstance(api_key, list | tuple) and len(api_key) == 2:
            api_key = (str(api_key[0]), str(api_key[1]))
        elif not isinstance(api_key, str):
            raise ConfigError(f"{where}: extra.api_key must be the encoded key (a string) or [id, key]")
        args["api_key"] = api_key
        credentials = "extra.api_key"
    tls_keys = [key for key in ("verify_certs", "ca_certs") if key in extra]
    if tls_keys and not url.startswith("https://"):
        raise ConfigError(
            f"{where} sets extra.{' and extra.'.join(tls_keys)} but its URL {url} is not https; set schema https"
        )
    if "verify_certs" in extra:
        verify = extra["verify_certs"]
        if isinstance(verify, str) and verify.lower() in ("true", "false"):
            verify = verify.lower() == "true"
        if not isinstance(verify, bool):
            raise ConfigError(f"{where}: extra.verify_certs must be true or false, not {verify!r}")
        args["verify_certs"] = verify
    ca_certs = extra.get("ca_certs")
    if ca_certs is not None:
        if not isinstance(ca_certs, str) or not os.path.isfile(ca_certs) or not os.access(ca_certs, os.R_OK):
            raise ConfigError(
                f"{where}: extra.ca_certs {ca_certs!r} is not a readable file; set it to the PEM file of the CA "
                "that signed the server's certificate"
            )
        args["ca_certs"] = ca_certs
    if "request_timeout" in extra:
        args["request_timeout"] = extra["request_timeout"]
    args["node_class"] = node_class(info.conn_id, url, credentials, ca_certs)
    return args
