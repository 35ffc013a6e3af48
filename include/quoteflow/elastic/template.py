"""The ``quotes`` composable index template: the data contract's mapping, core Elasticsearch features only.

``dynamic: strict`` makes a document with an unexpected field a per-item rejection (it goes to the
DLQ as ``mapping``) instead of silently widening the mapping.
"""

from __future__ import annotations

import logging
from typing import Any

from quoteflow.quotes import NUMBER_FIELDS_NULLABLE
from quoteflow.settings import INDEX_PATTERN, TEMPLATE_NAME

logger = logging.getLogger(__name__)

TEMPLATE_PRIORITY = 200


def quote_mappings() -> dict[str, Any]:
    """The mapping of a quote document: Quote v1 fields, ``@timestamp`` and ``kafka.*``."""
    keyword = {"type": "keyword"}
    double = {"type": "double"}
    date = {"type": "date"}
    properties: dict[str, Any] = {
        "@timestamp": date,
        "schema": {"type": "integer"},
        "source": keyword,
        "symbol": keyword,
        "exchange": keyword,
        "ticker": keyword,
        "price": double,
        **{name: double for name in NUMBER_FIELDS_NULLABLE},
        "currency": keyword,
        "update_mode": keyword,
        "event_time": date,
        "received_at": date,
        "kafka": {
            "properties": {
                "topic": keyword,
                "partition": {"type": "integer"},
                "offset": {"type": "long"},
                "timestamp": date,
            }
        },
    }
    return {"dynamic": "strict", "properties": properties}


def index_template(
    patterns: list[str] | None = None, *, shards: int = 1, replicas: int = 0, refresh_interval: str = "1s"
) -> dict[str, Any]:
    """The template body for ``PUT _index_template/quotes``."""
    return {
        "index_patterns": patterns or [INDEX_PATTERN],
        "priority": TEMPLATE_PRIORITY,
        "template": {
            "settings": {
                "number_of_shards": shards,
                "number_of_replicas": replicas,
                "refresh_interval": refresh_interval,
            },
            "mappings": quote_mappings(),
        },
        "_meta": {"managed_by": "quoteflow", "contract": "quote.v1"},
    }


def _normalize(value: Any) -> Any:
    """Stringify leaves so ``1`` and ``"1"`` compare equal, as Elasticsearch echoes settings as strings."""
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return str(value).lower() if isinstance(value, bool) else str(value)


def _flat_settings(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested or dotted settings → dotted keys without the ``index.`` prefix (ES echoes them nested)."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_settings(value, f"{name}."))
        else:
            out[name.removeprefix("index.")] = value
    return out


# Template fields quoteflow does not set: present on the cluster means someone changed the template.
_UNMANAGED = ("version", "data_stream", "allow_auto_create", "ignore_missing_component_templates", "deprecated")


def _comparable(body: dict[str, Any]) -> dict[str, Any]:
    """What a template means, in a form where the body sent and the one Elasticsearch echoes compare equal."""
    template = body.get("template", {})
    return _normalize(
        {
            "index_patterns": sorted(body.get("index_patterns", [])),
            "priority": body.get("priority"),
            "composed_of": body.get("composed_of") or [],
            "settings": _flat_settings(template.get("settings") or {}),
            "mappings": template.get("mappings", {}),
            "aliases": template.get("aliases") or {},
            "_meta": body.get("_meta"),
            **{key: body.get(key) for key in _UNMANAGED},
        }
    )


def ensure_template(es: Any, name: str = TEMPLATE_NAME, body: dict[str, Any] | None = None) -> str:
    """Create or update index template ``name``; return ``created``, ``updated`` or ``unchanged``."""
    wanted = body or index_template()
    current = None
    if es.indices.exists_index_template(name=name):
        found = es.indices.get_index_template(name=name)["index_templates"]
        current = found[0]["index_template"] if found else None
    if current is not None and _comparable(current) == _comparable(wanted):
        logger.info("index template %s already as wanted: nothing changed", name)
        return "unchanged"
    es.indices.put_index_template(name=name, **wanted)
    outcome = "created" if current is None else "updated"
    logger.info("index template %s %s for %s", name, outcome, wanted["index_patterns"])
    return outcome
