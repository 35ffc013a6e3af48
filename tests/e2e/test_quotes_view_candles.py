"""Candles in the Quotes view, in a real browser (Debian's Chromium via Playwright) inside the Airflow UI of `make run`.

One-minute bars of a symbol of the test's own (``E2E:C<hex>``) are written into an index of the
test's own under ``bars-*`` (the view's default pattern), with the bars template's mappings, and one
gap event into ``gaps-*``. The page must draw exactly as many candles as Elasticsearch holds bars in
range (counted from the chart library's own series data), redraw with fewer candles when the resolution
is switched to 5m (as many as distinct 5-minute buckets of those bars), and show the gap's marker.
The screenshot goes to tests/artifacts/ (docs/screenshots/live-view-candles.png is a copy of one).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from quoteflow.bars import bar_id, make_bar
from quoteflow.elastic.template import bar_mappings, gap_mappings
from quoteflow.gaps import make_gap
from tests.e2e.test_quotes_view import CHROMIUM, CHROMIUM_FLAGS
from tests.helpers.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
MINUTES = 95
GAP_AT = 60  # the gap starts 10 s into this minute and lasts 2 minutes


@dataclass
class SeededBars:
    """A symbol with bars and a gap in indices of this test's own, deleted afterwards."""

    symbol: str
    starts_ms: list[int]
    gap_id: str
    indices: list[str]


def seed_bars(es: Elasticsearch, tag: str, minutes: int = MINUTES) -> SeededBars:
    """``minutes`` closed 1m bars ending at the current minute, and one gap, written as the indexer writes them."""
    symbol = f"E2E:C{tag.upper()}"
    now_ms = int(time.time() * 1000)
    last = now_ms - now_ms % 60_000
    starts = [last - (minutes - 1 - i) * 60_000 for i in range(minutes)]
    indices: set[str] = set()
    price = 100.0
    for offset, t in enumerate(starts):
        o = price
        c = round(o + ((offset * 7919) % 13 - 6) * 0.25, 4)
        price = c
        bar = make_bar(
            symbol=symbol,
            resolution="1",
            start=t / 1000,
            open=o,
            high=round(max(o, c) + 0.5, 4),
            low=round(min(o, c) - 0.5, 4),
            close=c,
            volume=float(10 + offset % 17),
            closed=t != last,
            origin="history",
        )
        index = f"bars-e2e-{tag}-tradingview-{bar['start'][:7].replace('-', '.')}"
        if index not in indices:
            es.options(ignore_status=400).indices.create(index=index, mappings=bar_mappings())
            indices.add(index)
        doc = bar | {
            "@timestamp": bar["start"],
            "kafka": {"topic": "bars.e2e", "partition": 0, "offset": offset, "timestamp": now_ms},
        }
        es.index(
            index=index, id=bar_id(symbol, "1", bar["start"]), document=doc, version=offset, version_type="external_gte"
        )
    gap = make_gap("disconnect", starts[GAP_AT] / 1000 + 10, starts[GAP_AT + 2] / 1000, [symbol], detail="e2e gap")
    gap_index = f"gaps-e2e-{tag}-tradingview-{gap['start'][:7].replace('-', '.')}"
    es.options(ignore_status=400).indices.create(index=gap_index, mappings=gap_mappings())
    es.index(index=gap_index, id=gap["gap_id"], document=gap | {"@timestamp": gap["start"]})
    indices.add(gap_index)
    es.indices.refresh(index=",".join(sorted(indices)))
    return SeededBars(symbol, starts, gap["gap_id"], sorted(indices))


def es_bar_starts(es: Elasticsearch, symbol: str, since_ms: int) -> list[int]:
    """Start (ms) of every 1m bar of ``symbol`` in ``bars-*`` at or after ``since_ms``: what the chart must hold."""
    resp = es.search(
        index="bars-*",
        query={
            "bool": {
                "filter": [
                    {"term": {"symbol": symbol}},
                    {"term": {"resolution": "1"}},
                    {"range": {"start": {"gte": since_ms, "format": "epoch_millis"}}},
                ]
            }
        },
        size=10_000,
        source=False,
        docvalue_fields=[{"field": "start", "format": "epoch_millis"}],
        ignore_unavailable=True,
        allow_no_indices=True,
    )
    return sorted(int(float(h["fields"]["start"][0])) for h in resp["hits"]["hits"])


def _chart_state(frame: Any) -> dict[str, str]:
    return frame.locator("#candles").evaluate("el => ({...el.dataset})")


def check_candles(frame: Any, es: Elasticsearch, seeded: SeededBars, screenshot: Any) -> dict[str, Any]:
    """On a page showing ``seeded.symbol`` at 1m: counts at 1m, switch to 5m, counts again, the gap marker."""
    window_ms = 300 * 60_000  # the default range: 300 bars of the resolution
    wait_until(
        "1m candles drawn",
        lambda: _chart_state(frame).get("resolution") == "1" and int(_chart_state(frame)["candles"]) > 0,
        120,
        interval=0.5,
    )
    now_ms = int(time.time() * 1000)
    one_minute = es_bar_starts(es, seeded.symbol, now_ms - now_ms % 60_000 - window_ms)
    state = _chart_state(frame)
    assert int(state["candles"]) == len(one_minute) == MINUTES, state
    assert int(state["volumeBars"]) == MINUTES, state
    assert int(state["gapMarkers"]) == 1, state
    assert frame.locator("#gap-list li").count() == 1
    assert seeded.gap_id == frame.locator("#gap-list li").first.get_attribute("data-gap-id")
    assert frame.locator("#candles canvas").count() >= 1, "lightweight-charts drew no canvas"
    screenshot("1m")

    frame.locator("#resolution").select_option("5")
    wait_until("5m candles drawn", lambda: _chart_state(frame).get("resolution") == "5", 120, interval=0.5)
    five = {t - t % 300_000 for t in es_bar_starts(es, seeded.symbol, 0)}
    state = _chart_state(frame)
    assert int(state["candles"]) == len(five) < MINUTES, (state, len(five))
    assert int(state["gapMarkers"]) == 1, state
    screenshot("5m")
    return {"candles_1m": len(one_minute), "candles_5m": len(five)}


def check_shards(frame: Any, pipeline: Any) -> int:
    """The health section has one row per ``produce_quotes`` task instance of the producer run it names."""
    import urllib.parse

    body = frame.locator("#shards-body")

    def shown() -> tuple[str, int] | None:
        run_id, count = body.evaluate("el => [el.dataset.runId || '', Number(el.dataset.count || 0)]")
        return (run_id, count) if run_id and count else None

    run_id, count = wait_until("producer shards in the health section", shown, 120, interval=1)
    run = urllib.parse.quote(run_id, safe="")
    tis = pipeline.api(f"/api/v2/dags/quotes_producer/dagRuns/{run}/taskInstances")["task_instances"]
    shards = [ti for ti in tis if ti["task_id"] == "produce_quotes"]
    assert count == len(shards) >= 1, (count, [(t["task_id"], t["map_index"], t["state"]) for t in tis])
    assert body.locator("tr").count() == count
    return count


@pytest.fixture
def seeded(es_url: str) -> Iterator[SeededBars]:
    es = Elasticsearch(es_url, request_timeout=30)
    bars = seed_bars(es, uuid.uuid4().hex[:8])
    yield bars
    es.options(ignore_status=404).indices.delete(index=",".join(bars.indices))
    es.close()


def test_quotes_view_draws_candles_switches_resolution_and_marks_gaps(pipeline, seeded, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    es = Elasticsearch(pipeline.es_url, request_timeout=30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1440, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.goto(f"{pipeline.airflow_url}/")
            page.get_by_label("Username").fill(pipeline.username)
            page.get_by_label("Password").fill(pipeline.password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{pipeline.airflow_url}/", timeout=30_000)
            page.get_by_role("button", name="Browse").click()
            page.get_by_role("menuitem", name="Quotes").click()
            page.wait_for_url("**/plugin/quotes**", timeout=30_000)
            frame = page.frame_locator("iframe[title='Quotes']")
            frame.locator("body[data-ready='1']").wait_for(timeout=30_000)
            # The symbol is a query parameter: open the test's own symbol as a bookmark would.
            frame.locator("body").evaluate(
                "(_, s) => { window.location.search = new URLSearchParams({symbol: s, resolution: '1'}) }",
                seeded.symbol,
            )
            frame.locator(f"#candles[data-symbol='{seeded.symbol}']").wait_for(timeout=60_000)

            def screenshot(label: str) -> None:
                page.screenshot(path=str(ARTIFACTS / f"live-view-candles-{label}.png"))

            counts = check_candles(frame, es, seeded, screenshot)
            counts["shards"] = check_shards(frame, pipeline)
        finally:
            browser.close()
            es.close()
    print(f"candles drawn: {counts}; screenshots in {ARTIFACTS}")
