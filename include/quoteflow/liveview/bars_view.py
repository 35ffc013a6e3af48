"""Candles for the live view: the stored 1-minute bars, aggregated server-side to 5m, 1h and 1D, and the gaps.

One stream is kept exact, the 1-minute bars (``resolution: "1"``) in ``bars-*``; coarser candles are
computed from them rather than subscribed as extra TradingView series: ``open`` = the first minute's
open, ``close`` = the last minute's close, ``high`` = max, ``low`` = min, ``volume`` = sum (null when no
minute had a volume). Elasticsearch aggregates the history (``date_histogram`` on ``start``, UTC
buckets); :func:`aggregate` does the same in Python for the newest buckets, where the Kafka tail holds
bar versions the indexer has not written yet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

BASE_RESOLUTION = "1"
# TradingView's resolution codes the view offers, and their length in seconds.
RESOLUTIONS: dict[str, int] = {"1": 60, "5": 300, "60": 3600, "1D": 86400}
LABELS = {"1": "1m", "5": "5m", "60": "1h", "1D": "1D"}
MAX_CANDLES = 2000  # per answer: a 1m chart of 33 h, a 1D chart of 5 years
MAX_GAPS = 500
BAR_SOURCE = ["start", "open", "high", "low", "close", "volume", "closed", "kafka.partition", "kafka.offset"]
GAP_SOURCE = ["gap_id", "cause", "start", "end", "shard", "detail", "symbols"]


def epoch_ms(rfc3339: str) -> int:
    """RFC 3339 UTC text (``…T02:00:00.123Z``) → epoch milliseconds."""
    return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000)


def resolution_seconds(resolution: str) -> int:
    """A resolution code (``1``, ``5``, ``60``, ``1D``) → seconds; :class:`ValueError` naming the choices."""
    try:
        return RESOLUTIONS[resolution]
    except KeyError:
        choices = ", ".join(f"{code} ({label})" for code, label in LABELS.items())
        raise ValueError(f"resolution {resolution!r} is not one of {choices}") from None


def floor_ms(ms: int, width_s: int) -> int:
    """The start (epoch ms) of the ``width_s`` bucket holding ``ms``: UTC-aligned, as TradingView's bars are."""
    width = width_s * 1000
    return ms - ms % width


def _bar_filters(symbol: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
    return [
        {"term": {"symbol": symbol}},
        {"term": {"resolution": BASE_RESOLUTION}},
        {"range": {"start": {"gte": start_ms, "lte": end_ms, "format": "epoch_millis"}}},
    ]


def base_bar(doc: Mapping[str, Any], partition: int | None, offset: int | None) -> dict[str, Any]:
    """A 1-minute bar as the view handles it: ``t`` (start, ms), prices, volume, closed, and its Kafka position."""
    return {
        "t": epoch_ms(doc["start"]),
        "open": float(doc["open"]),
        "high": float(doc["high"]),
        "low": float(doc["low"]),
        "close": float(doc["close"]),
        "volume": None if doc.get("volume") is None else float(doc["volume"]),
        "closed": bool(doc["closed"]),
        "partition": partition,
        "offset": offset,
    }


def base_bars(es: Any, index: str, symbol: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
    """The stored 1-minute bars of ``symbol`` whose start lies in ``[start_ms, end_ms]``, oldest first."""
    size = min(10_000, (end_ms - start_ms) // 60_000 + 2)
    resp = es.search(
        index=index,
        query={"bool": {"filter": _bar_filters(symbol, start_ms, end_ms)}},
        sort=[{"start": {"order": "asc"}}],
        size=size,
        source=BAR_SOURCE,
        ignore_unavailable=True,
        allow_no_indices=True,
    )
    out = []
    for hit in resp["hits"]["hits"]:
        doc = hit["_source"]
        kafka = doc.get("kafka") or {}
        out.append(base_bar(doc, kafka.get("partition"), kafka.get("offset")))
    return out


def aggregated_bars(
    es: Any, index: str, symbol: str, resolution: str, start_ms: int, end_ms: int
) -> list[dict[str, Any]]:
    """Candles of ``resolution`` over the 1-minute bars starting in ``[start_ms, end_ms]``, computed by ES."""
    width_s = resolution_seconds(resolution)
    body = {
        "size": 0,
        "query": {"bool": {"filter": _bar_filters(symbol, start_ms, end_ms)}},
        "aggs": {
            "candles": {
                # No time_zone: buckets are UTC-aligned, the days of a 1D candle are UTC days.
                "date_histogram": {"field": "start", "fixed_interval": f"{width_s}s", "min_doc_count": 1},
                "aggs": {
                    "first": {"top_hits": {"size": 1, "sort": [{"start": "asc"}], "_source": ["open"]}},
                    "last": {"top_hits": {"size": 1, "sort": [{"start": "desc"}], "_source": ["close"]}},
                    "high": {"max": {"field": "high"}},
                    "low": {"min": {"field": "low"}},
                    "volume": {"sum": {"field": "volume"}},
                    "volumes": {"value_count": {"field": "volume"}},
                    "closed": {"min": {"field": "closed"}},
                    "minutes": {"value_count": {"field": "start"}},
                },
            }
        },
    }
    resp = es.search(index=index, **body, ignore_unavailable=True, allow_no_indices=True)
    out = []
    for bucket in resp.get("aggregations", {}).get("candles", {}).get("buckets", []):
        out.append(
            {
                "t": int(bucket["key"]),
                "open": float(bucket["first"]["hits"]["hits"][0]["_source"]["open"]),
                "high": float(bucket["high"]["value"]),
                "low": float(bucket["low"]["value"]),
                "close": float(bucket["last"]["hits"]["hits"][0]["_source"]["close"]),
                "volume": float(bucket["volume"]["value"]) if bucket["volumes"]["value"] else None,
                "closed": bucket["closed"]["value"] == 1,
                "bars": int(bucket["minutes"]["value"]),
            }
        )
    return out


def aggregate(bars: Iterable[Mapping[str, Any]], resolution: str) -> list[dict[str, Any]]:
    """The same candles as :func:`aggregated_bars`, from 1-minute bars in hand (any order, one per start)."""
    width_s = resolution_seconds(resolution)
    candles: dict[int, dict[str, Any]] = {}
    for bar in sorted(bars, key=lambda b: b["t"]):
        key = floor_ms(bar["t"], width_s)
        candle = candles.get(key)
        if candle is None:
            candles[key] = {
                "t": key,
                "open": bar["open"],
                "high": bar["high"],
                "low": bar["low"],
                "close": bar["close"],
                "volume": bar["volume"],
                "closed": bar["closed"],
                "bars": 1,
            }
            continue
        candle["high"] = max(candle["high"], bar["high"])
        candle["low"] = min(candle["low"], bar["low"])
        candle["close"] = bar["close"]
        if bar["volume"] is not None:
            candle["volume"] = bar["volume"] + (candle["volume"] or 0.0)
        candle["closed"] = candle["closed"] and bar["closed"]
        candle["bars"] += 1
    return [candles[k] for k in sorted(candles)]


def gap_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A gap event as the page marks it: id, cause, start/end (ms and text), shard, detail."""
    return {
        "gap_id": doc["gap_id"],
        "cause": doc.get("cause"),
        "start": doc["start"],
        "end": doc["end"],
        "start_ms": epoch_ms(doc["start"]),
        "end_ms": epoch_ms(doc["end"]),
        "shard": doc.get("shard"),
        "detail": doc.get("detail"),
    }


def gaps(es: Any, index: str, symbol: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
    """The gap events of ``symbol`` that overlap ``[start_ms, end_ms]``, oldest first."""
    resp = es.search(
        index=index,
        query={
            "bool": {
                "filter": [
                    {"term": {"symbols": symbol}},
                    {"range": {"start": {"lte": end_ms, "format": "epoch_millis"}}},
                    {"range": {"end": {"gte": start_ms, "format": "epoch_millis"}}},
                ]
            }
        },
        sort=[{"start": {"order": "asc"}}],
        size=MAX_GAPS,
        source=GAP_SOURCE,
        ignore_unavailable=True,
        allow_no_indices=True,
    )
    return [gap_view(hit["_source"]) for hit in resp["hits"]["hits"]]
