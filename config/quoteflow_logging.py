"""Airflow's logging config for quoteflow: task logs go to Elasticsearch through the Elasticsearch provider.

Named by ``[logging] logging_config_class = quoteflow_logging.LOGGING_CONFIG``; this folder is on the
path (``scripts/run`` puts it on PYTHONPATH, compose mounts it at ``$AIRFLOW_HOME/config``, which
Airflow adds itself). With ``[logging] remote_logging`` on, the ``task`` handler is the provider's
``ElasticsearchTaskHandler`` and ``REMOTE_TASK_LOG`` its ``ElasticsearchRemoteLogIO``, at module scope
as Airflow 3.2+ wants: when a task ends, its JSON log lines are bulk-written to ``[elasticsearch]
target_index``, each with ``log_id`` (``[elasticsearch] log_id_template``) and ``offset``, and the API
server reads finished tasks' logs back from there (a running task's from its local file). The
handler's client is ``Elasticsearch([elasticsearch] host, **[elasticsearch_configs])``, so
credentials travel in the host URL (``http://user:password@host:9200``) and a CA in
``[elasticsearch_configs] ca_certs``, both from the environment. Airflow configuration only: no
quoteflow import, and ``include/quoteflow`` never imports this.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

from airflow.configuration import conf

TASK_HANDLER = "airflow.providers.elasticsearch.log.es_task_handler.ElasticsearchTaskHandler"
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


REMOTE_LOGGING = conf.getboolean("logging", "remote_logging")
if REMOTE_LOGGING:
    _checked_settings()  # before Airflow's default module, whose own check does not say what to set

from airflow.config_templates.airflow_local_settings import BASE_LOG_FOLDER, DEFAULT_LOGGING_CONFIG  # noqa: E402

LOGGING_CONFIG: dict[str, Any] = deepcopy(DEFAULT_LOGGING_CONFIG)
REMOTE_TASK_LOG: Any = None

if REMOTE_LOGGING:
    from airflow.providers.elasticsearch.log.es_task_handler import ElasticsearchRemoteLogIO

    REMOTE_TASK_LOG = ElasticsearchRemoteLogIO.from_config()
    LOGGING_CONFIG["handlers"]["task"] = {
        "class": TASK_HANDLER,
        "formatter": "airflow",
        "base_log_folder": BASE_LOG_FOLDER,
        "end_of_log_mark": conf.get_mandatory_value("elasticsearch", "end_of_log_mark"),
        "host": conf.get_mandatory_value("elasticsearch", "host"),
        "frontend": conf.get("elasticsearch", "frontend", fallback=""),
        "write_stdout": False,
        "write_to_es": True,
        "json_format": True,
        "json_fields": conf.get_mandatory_value("elasticsearch", "json_fields"),
        "host_field": conf.get_mandatory_value("elasticsearch", "host_field"),
        "offset_field": conf.get_mandatory_value("elasticsearch", "offset_field"),
        "target_index": conf.get_mandatory_value("elasticsearch", "target_index"),
    }
