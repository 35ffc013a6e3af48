"""Elasticsearch reads for the live view: a time-bucketed price series and the newest quote per symbol.

Time is the producer's ``received_at`` (not ``@timestamp``): ``event_time`` can be old in a replay
and has whole-second resolution, while ``received_at`` is when the tick entered the pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

# Newest first: the producer's clock, then the record's position (one symbol lives in one partition).
NEWEST_FIRST: list[dict[str, Any]] = [
    {"received_at": {"order": "desc"}},
    {"kafka.offset": {"order": "desc", "unmapped_type": "long"}},
]
MAX_SYMBOLS = 500
NICE_INTERVALS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)


def bucket_interval_s(range_s: int, max_points: int = 300) -> int:
    """The smallest round bucket width (seconds) that keeps ``range_s`` within ``max_points`` buckets."""
    for width in NICE_INTERVALS_S:
        if range_s / width <= max_points:
            return width
    return NICE_INTERVALS_S[-1]


def price_series(
    es: Any, index: str, topic: str, symbol: str, start_ms: int, end_ms: int, *, max_points: int = 300
) -> list[tuple[int, float]]:
    """``(received_at ms, price)`` of the last tick per time bucket of ``[start_ms, end_ms]``: one symbol, one topic."""
    width = bucket_interval_s(max(1, (end_ms - start_ms) // 1000), max_points)
    body = {
        "size": 0,
        "query": {
            "bool": {
                "filter": [
                    {"term": {"symbol": symbol}},
                    {"term": {"kafka.topic": topic}},
                    {"range": {"received_at": {"gte": start_ms, "lte": end_ms, "format": "epoch_millis"}}},
                ]
            }
        },
        "aggs": {
            "buckets": {
                "date_histogram": {"field": "received_at", "fixed_interval": f"{width}s", "min_doc_count": 1},
                "aggs": {"last": {"top_hits": {"size": 1, "sort": NEWEST_FIRST, "_source": ["price"]}}},
            }
        },
    }
    resp = es.search(index=index, **body, ignore_unavailable=True, allow_no_indices=True)
    points: list[tuple[int, float]] = []
    for bucket in resp.get("aggregations", {}).get("buckets", {}).get("buckets", []):
        hit = bucket["last"]["hits"]["hits"][0]
        points.append((int(hit["sort"][0]), float(hit["_source"]["price"])))
    return points


def latest_quotes(es: Any, index: str, topic: str, symbols: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """The newest document of ``topic`` per symbol (all symbols when ``symbols`` is empty), with ``_id``, ``_index``."""
    filters: list[dict[str, Any]] = [{"term": {"kafka.topic": topic}}]
    if symbols:
        filters.append({"terms": {"symbol": list(symbols)}})
    query = {"bool": {"filter": filters}}
    body = {
        "size": 0,
        "query": query,
        "aggs": {
            "symbols": {
                "terms": {"field": "symbol", "size": len(symbols) if symbols else MAX_SYMBOLS},
                "aggs": {"newest": {"top_hits": {"size": 1, "sort": NEWEST_FIRST}}},
            }
        },
    }
    resp = es.search(index=index, **body, ignore_unavailable=True, allow_no_indices=True)
    out: dict[str, dict[str, Any]] = {}
    for bucket in resp.get("aggregations", {}).get("symbols", {}).get("buckets", []):
        hit = bucket["newest"]["hits"]["hits"][0]
        doc = dict(hit["_source"])
        doc["_id"] = hit["_id"]
        doc["_index"] = hit["_index"]
        out[bucket["key"]] = doc
    return out


def known_symbols(es: Any, index: str, topic: str) -> list[str]:
    """Every symbol of ``topic`` that has at least one document, sorted."""
    body = {
        "size": 0,
        "query": {"term": {"kafka.topic": topic}},
        "aggs": {"symbols": {"terms": {"field": "symbol", "size": MAX_SYMBOLS}}},
    }
    resp = es.search(index=index, **body, ignore_unavailable=True, allow_no_indices=True)
    return sorted(b["key"] for b in resp.get("aggregations", {}).get("symbols", {}).get("buckets", []))
