"""Airflow's logging config for quoteflow: task logs go to Elasticsearch through the Elasticsearch provider.

Named by ``[logging] logging_config_class = quoteflow_logging.LOGGING_CONFIG``; this folder is on the
path (``scripts/run`` puts it on PYTHONPATH, compose mounts it at ``$AIRFLOW_HOME/config``, which
Airflow adds itself). With ``[logging] remote_logging`` on, the ``task`` handler is the provider's
``ElasticsearchTaskHandler`` and ``REMOTE_TASK_LOG`` its ``ElasticsearchRemoteLogIO``, at module scope
as Airflow 3.2+ wants: when a task ends, its JSON log lines are bulk-written to ``[elasticsearch]
target_index``, each with ``log_id`` (``[elasticsearch] log_id_template``) and ``offset``, and the API
server reads finished tasks' logs back from there (a running task's from its local file). The
handler's client is ``Elasticsearch([elasticsearch] host, **[elasticsearch_configs])`` plus, when the
host URL carries no login, ``basic_auth`` from the ``elasticsearch_default`` connection's environment
variable (``AIRFLOW_CONN_ELASTICSEARCH_DEFAULT``, JSON or URI form): the password then lives only in
that connection, never in a config value (``airflow config list`` shows ``[elasticsearch] host``, and
Airflow does not mask it). A CA goes in ``[elasticsearch_configs] ca_certs``. Airflow configuration
only: no quoteflow import, and ``include/quoteflow`` never imports this.
"""

from __future__ import annotations

import json
import os
from copy import deepcopy
from typing import Any
from urllib.parse import unquote, urlsplit

from airflow.configuration import conf

TASK_HANDLER = "quoteflow_logging.QuoteflowElasticsearchTaskHandler"
REQUIRED = {"write_to_es": True, "json_format": True, "write_stdout": False}


def _checked_settings() -> None:
    """Refuse a half-set configuration at start-up, naming the variable to set, instead of losing logs."""
    if not conf.get("elasticsearch", "host", fallback=""):
        raise ValueError(
            "[logging] remote_logging is on but [elasticsearch] host is empty; set AIRFLOW__ELASTICSEARCH__HOST"
        )
    for option, wanted in REQUIRED.items():
        if conf.getboolean("elasticsearch", option) is not wanted:
            raise ValueError(
                f"quoteflow writes task logs to Elasticsearch directly: set AIRFLOW__ELASTICSEARCH__{option.upper()}"
                f"={wanted}"
            )


def connection_login(variable: str = "AIRFLOW_CONN_ELASTICSEARCH_DEFAULT") -> tuple[str, str] | None:
    """``(login, password)`` of the Elasticsearch connection's environment variable, if it has a login."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return None
    if raw.startswith("{"):
        fields = json.loads(raw)
        login, password = fields.get("login") or "", fields.get("password") or ""
    else:
        parts = urlsplit(raw)
        login, password = unquote(parts.username or ""), unquote(parts.password or "")
    return (login, password) if login else None


def client_kwargs(host: str) -> dict[str, Any]:
    """The provider's ``[elasticsearch_configs]`` kwargs, plus the connection's login when ``host`` has none."""
    from airflow.providers.elasticsearch.log.es_task_handler import get_es_kwargs_from_config

    kwargs: dict[str, Any] = dict(get_es_kwargs_from_config())
    login = connection_login()
    if login and not urlsplit(host).username and not {"basic_auth", "http_auth", "api_key"} & set(kwargs):
        kwargs["basic_auth"] = login
    return kwargs


REMOTE_LOGGING = conf.getboolean("logging", "remote_logging")
if REMOTE_LOGGING:
    _checked_settings()  # before Airflow's default module, whose own check does not say what to set

from airflow.config_templates.airflow_local_settings import BASE_LOG_FOLDER, DEFAULT_LOGGING_CONFIG  # noqa: E402

LOGGING_CONFIG: dict[str, Any] = deepcopy(DEFAULT_LOGGING_CONFIG)
REMOTE_TASK_LOG: Any = None

if REMOTE_LOGGING:
    from airflow.providers.elasticsearch.log.es_task_handler import ElasticsearchRemoteLogIO, apply_compat_with
    from elasticsearch import Elasticsearch

    HOST = conf.get_mandatory_value("elasticsearch", "host")
    ES_KWARGS = client_kwargs(HOST)
    REMOTE_TASK_LOG = ElasticsearchRemoteLogIO.from_config()
    # from_config() builds its client from [elasticsearch_configs] only: the same client, with the login.
    REMOTE_TASK_LOG.client = apply_compat_with(Elasticsearch(REMOTE_TASK_LOG.host, **ES_KWARGS))
    from airflow.providers.elasticsearch.log.es_task_handler import ElasticsearchTaskHandler

    class QuoteflowElasticsearchTaskHandler(ElasticsearchTaskHandler):
        """The provider's handler, whose reads use its own client (built with ``es_kwargs``, so with the login).

        The provider builds the handler's reader (``self.io``) from ``[elasticsearch_configs]`` only; reading
        through the handler's own client is the one change.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.io.client = self.client

    LOGGING_CONFIG["handlers"]["task"] = {
        "class": TASK_HANDLER,
        "formatter": "airflow",
        "base_log_folder": BASE_LOG_FOLDER,
        "end_of_log_mark": conf.get_mandatory_value("elasticsearch", "end_of_log_mark"),
        "host": HOST,
        "es_kwargs": ES_KWARGS,
        "frontend": conf.get("elasticsearch", "frontend", fallback=""),
        "write_stdout": False,
        "write_to_es": True,
        "json_format": True,
        "json_fields": conf.get_mandatory_value("elasticsearch", "json_fields"),
        "host_field": conf.get_mandatory_value("elasticsearch", "host_field"),
        "offset_field": conf.get_mandatory_value("elasticsearch", "offset_field"),
        "target_index": conf.get_mandatory_value("elasticsearch", "target_index"),
    }
