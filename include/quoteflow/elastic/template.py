"""The ``quotes``, ``bars`` and ``gaps`` composable index templates: the contracts' mappings, core features only.

``dynamic: strict`` makes a document with an unexpected field a per-item rejection (it goes to the
DLQ as ``mapping``) instead of silently widening the mapping.
"""

from __future__ import annotations

import logging
from typing import Any

from quoteflow.quotes import NUMBER_FIELDS_NULLABLE
from quoteflow.settings import (
    BARS_INDEX_PATTERN,
    BARS_TEMPLATE_NAME,
    GAPS_INDEX_PATTERN,
    GAPS_TEMPLATE_NAME,
    INDEX_PATTERN,
    TEMPLATE_NAME,
)

logger = logging.getLogger(__name__)

TEMPLATE_PRIORITY = 200


KEYWORD = {"type": "keyword"}
DOUBLE = {"type": "double"}
DATE = {"type": "date"}
KAFKA_MAPPING = {
    "properties": {
        "topic": KEYWORD,
        "partition": {"type": "integer"},
        "offset": {"type": "long"},
        "timestamp": DATE,
    }
}


def quote_mappings() -> dict[str, Any]:
    """The mapping of a quote document: Quote v1 fields, ``@timestamp`` and ``kafka.*``."""
    keyword, double, date = KEYWORD, DOUBLE, DATE
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
        "kafka": KAFKA_MAPPING,
    }
    return {"dynamic": "strict", "properties": properties}


def bar_mappings() -> dict[str, Any]:
    """The mapping of a bar document: Bar v1 fields, ``@timestamp`` (= ``start``) and ``kafka.*``."""
    properties: dict[str, Any] = {
        "@timestamp": DATE,
        "schema": {"type": "integer"},
        **{name: KEYWORD for name in ("source", "symbol", "resolution", "origin")},
        "start": DATE,
        "received_at": DATE,
        **{name: DOUBLE for name in ("open", "high", "low", "close", "volume")},
        "closed": {"type": "boolean"},
        "kafka": KAFKA_MAPPING,
    }
    return {"dynamic": "strict", "properties": properties}


def gap_mappings() -> dict[str, Any]:
    """The mapping of a gap document: gap v1 fields, ``@timestamp`` (= ``start``) and ``kafka.*``."""
    properties: dict[str, Any] = {
        "@timestamp": DATE,
        "schema": {"type": "integer"},
        **{name: KEYWORD for name in ("source", "gap_id", "cause", "symbols", "shard", "detail")},
        **{name: DATE for name in ("start", "end", "recorded_at")},
        "kafka": KAFKA_MAPPING,
    }
    return {"dynamic": "strict", "properties": properties}


def index_template(
    patterns: list[str] | None = None,
    *,
    shards: int = 1,
    replicas: int = 0,
    refresh_interval: str = "1s",
    mappings: dict[str, Any] | None = None,
    contract: str = "quote.v1",
) -> dict[str, Any]:
    """The template body for ``PUT _index_template/quotes`` (or, with ``mappings`` and ``contract``, another)."""
    return {
        "index_patterns": patterns or [INDEX_PATTERN],
        "priority": TEMPLATE_PRIORITY,
        "template": {
            "settings": {
                "number_of_shards": shards,
                "number_of_replicas": replicas,
                "refresh_interval": refresh_interval,
            },
            "mappings": mappings or quote_mappings(),
        },
        "_meta": {"managed_by": "quoteflow", "contract": contract},
    }


def bars_template(patterns: list[str] | None = None) -> dict[str, Any]:
    """The template body for ``PUT _index_template/bars`` (``bars-*``)."""
    return index_template(patterns or [BARS_INDEX_PATTERN], mappings=bar_mappings(), contract="bar.v1")


def gaps_template(patterns: list[str] | None = None) -> dict[str, Any]:
    """The template body for ``PUT _index_template/gaps`` (``gaps-*``)."""
    return index_template(patterns or [GAPS_INDEX_PATTERN], mappings=gap_mappings(), contract="gap.v1")


def all_templates() -> dict[str, dict[str, Any]]:
    """Every template quoteflow manages, by name: ``quotes``, ``bars``, ``gaps``."""
    return {TEMPLATE_NAME: index_template(), BARS_TEMPLATE_NAME: bars_template(), GAPS_TEMPLATE_NAME: gaps_template()}


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


def ensure_templates(es: Any) -> dict[str, str]:
    """Create or update the ``quotes``, ``bars`` and ``gaps`` templates; per name what was done."""
    return {name: ensure_template(es, name, body) for name, body in all_templates().items()}
