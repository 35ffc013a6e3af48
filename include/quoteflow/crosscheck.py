"""Ticks against bars: two streams from the same source check each other.

For each closed bar of the last ``hours`` that has ticks (quotes) in its span, every tick price must
lie within ``[low, high]`` and the last tick must equal the close. Ticks are grouped in
Elasticsearch with one ``composite`` aggregation per bar span (symbol × ``date_histogram`` of
``@timestamp``; min and max price; the last tick by ``@timestamp`` then ``kafka.offset`` — one
symbol's quotes share a partition, so offsets order them), never a document scan. Bars whose span
ends within :data:`SETTLE_S` of the newest indexed quote are left for the next run, as their last
ticks may not be indexed yet. Day, week and month bars follow exchange sessions, not UTC spans, and
are not checked.

The figure is quality, not completeness: the bars that disagree are counted and named (the first
:data:`MAX_NAMED`); they do not fail reconcile.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from quoteflow.bars import bar_id
from quoteflow.quotes import format_timestamp

logger = logging.getLogger(__name__)

MAX_NAMED = 20
SETTLE_S = 30.0
PAGE = 1000
_MINUTES = re.compile(r"^(\d+)$")
_SECONDS = re.compile(r"^(\d+)S$")


def resolution_seconds(resolution: str) -> int | None:
    """A bar's span in seconds for minute (``"1"``, ``"60"``) and second (``"30S"``) resolutions; else ``None``."""
    if m := _MINUTES.match(resolution):
        return int(m.group(1)) * 60 or None
    if m := _SECONDS.match(resolution):
        return int(m.group(1)) or None
    return None


def _epoch_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _newest_quote_ms(es: Any, quotes_pattern: str) -> int | None:
    response = es.search(
        index=quotes_pattern,
        size=0,
        aggs={"newest": {"max": {"field": "kafka.timestamp"}}},
        ignore_unavailable=True,
        allow_no_indices=True,
    )
    value = (response.get("aggregations") or {}).get("newest", {}).get("value")
    return int(value) if value is not None else None


def _closed_bars(es: Any, bars_pattern: str, since_ms: int, until_ms: int) -> Iterator[dict[str, Any]]:
    """Closed bars with ``since_ms <= start < until_ms``, paged with ``search_after``."""
    after: list[Any] | None = None
    while True:
        response = es.search(
            index=bars_pattern,
            size=PAGE,
            query={
                "bool": {
                    "filter": [
                        {"term": {"closed": True}},
                        {"range": {"start": {"gte": since_ms, "lt": until_ms, "format": "epoch_millis"}}},
                    ]
                }
            },
            sort=[{"start": "asc"}, {"symbol": "asc"}, {"resolution": "asc"}],
            source=["symbol", "resolution", "start", "low", "high", "close"],
            search_after=after,
            ignore_unavailable=True,
            allow_no_indices=True,
            track_total_hits=False,
        )
        hits = response["hits"]["hits"]
        yield from (h["_source"] for h in hits)
        if len(hits) < PAGE:
            return
        after = hits[-1]["sort"]


def _tick_stats(
    es: Any, quotes_pattern: str, symbols: Sequence[str], since_ms: int, until_ms: int, span_s: int
) -> dict[tuple[str, int], tuple[int, float, float, float]]:
    """``(symbol, span start ms)`` → ``(ticks, lowest, highest, last price)`` of the quotes in that span."""
    out: dict[tuple[str, int], tuple[int, float, float, float]] = {}
    after: dict[str, Any] | None = None
    while True:
        composite: dict[str, Any] = {
            "size": PAGE,
            "sources": [
                {"symbol": {"terms": {"field": "symbol"}}},
                {"span": {"date_histogram": {"field": "@timestamp", "fixed_interval": f"{span_s}s"}}},
            ],
        }
        if after is not None:
            composite["after"] = after
        response = es.search(
            index=quotes_pattern,
            size=0,
            query={
                "bool": {
                    "filter": [
                        {"terms": {"symbol": list(symbols)}},
                        {"range": {"@timestamp": {"gte": since_ms, "lt": until_ms, "format": "epoch_millis"}}},
                    ]
                }
            },
            aggs={
                "spans": {
                    "composite": composite,
                    "aggs": {
                        "low": {"min": {"field": "price"}},
                        "high": {"max": {"field": "price"}},
                        "last": {
                            "top_hits": {
                                "size": 1,
                                "sort": [{"@timestamp": "desc"}, {"kafka.offset": "desc"}],
                                "_source": ["price"],
                            }
                        },
                    },
                }
            },
            ignore_unavailable=True,
            allow_no_indices=True,
        )
        spans = (response.get("aggregations") or {}).get("spans") or {}
        buckets = spans.get("buckets") or []
        for b in buckets:
            last = b["last"]["hits"]["hits"][0]["_source"]["price"]
            key = (str(b["key"]["symbol"]), int(b["key"]["span"]))
            out[key] = (int(b["doc_count"]), float(b["low"]["value"]), float(b["high"]["value"]), float(last))
        after = spans.get("after_key")
        if not buckets or after is None:
            return out


def cross_check(
    es: Any,
    quotes_prefix: str,
    bars_prefix: str,
    *,
    hours: float,
    now_ms: int | None = None,
    max_named: int = MAX_NAMED,
) -> dict[str, Any]:
    """Check the closed bars of the last ``hours`` against their ticks; counts, and the first disagreeing bars."""
    quotes_pattern, bars_pattern = f"{quotes_prefix}*", f"{bars_prefix}*"
    es.options(ignore_status=404).indices.refresh(index=f"{quotes_pattern},{bars_pattern}", allow_no_indices=True)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    since_ms = now_ms - int(hours * 3600 * 1000)
    newest = _newest_quote_ms(es, quotes_pattern)
    until_ms = min(now_ms, newest - int(SETTLE_S * 1000)) if newest is not None else since_ms
    out: dict[str, Any] = {
        "since": format_timestamp(since_ms / 1000),
        "until": format_timestamp(max(since_ms, until_ms) / 1000),
        "bars": 0,
        "checked": 0,
        "without_ticks": 0,
        "disagreeing": 0,
        "named": [],
    }
    if until_ms <= since_ms:
        logger.info("cross-check: no quotes indexed since %s: no bar to check", out["since"])
        return out
    by_span: dict[int, list[dict[str, Any]]] = {}
    for bar in _closed_bars(es, bars_pattern, since_ms, until_ms):
        span = resolution_seconds(str(bar["resolution"]))
        if span is not None and _epoch_ms(bar["start"]) + span * 1000 <= until_ms:
            by_span.setdefault(span, []).append(bar)
    named: list[dict[str, Any]] = []
    for span, bars in sorted(by_span.items()):
        out["bars"] += len(bars)
        ticks = _tick_stats(es, quotes_pattern, sorted({b["symbol"] for b in bars}), since_ms, until_ms, span)
        for bar in bars:
            found = ticks.get((bar["symbol"], _epoch_ms(bar["start"])))
            if found is None:
                out["without_ticks"] += 1
                continue
            out["checked"] += 1
            why = _disagreement(bar, found)
            if why:
                out["disagreeing"] += 1
                if len(named) < max_named:
                    named.append(_named(bar, found, why))
    out["named"] = named
    if out["disagreeing"]:
        logger.warning(
            "cross-check: %s of %s closed bar(s) with ticks disagree with their ticks; first: %s",
            out["disagreeing"],
            out["checked"],
            ", ".join(n["id"] for n in named[:5]),
        )
    else:
        logger.info("cross-check: %s closed bar(s) with ticks, all agree with them", out["checked"])
    return out


def _disagreement(bar: Mapping[str, Any], ticks: tuple[int, float, float, float]) -> list[str]:
    _count, lowest, highest, last = ticks
    low, high, close = float(bar["low"]), float(bar["high"]), float(bar["close"])
    why = []
    if lowest < low and not _same(lowest, low):
        why.append(f"a tick at {lowest} is below the low {low}")
    if highest > high and not _same(highest, high):
        why.append(f"a tick at {highest} is above the high {high}")
    if not _same(last, close):
        why.append(f"the last tick {last} is not the close {close}")
    return why


def _named(bar: Mapping[str, Any], ticks: tuple[int, float, float, float], why: list[str]) -> dict[str, Any]:
    count, lowest, highest, last = ticks
    return {
        "id": bar_id(bar["symbol"], bar["resolution"], bar["start"]),
        "low": bar["low"],
        "high": bar["high"],
        "close": bar["close"],
        "ticks": count,
        "tick_low": lowest,
        "tick_high": highest,
        "last_tick": last,
        "why": "; ".join(why),
    }
