"""The Quotes view in a real browser: Debian's Chromium, driven by Playwright, inside the Airflow UI of `make run`.

Logs in through Airflow's login page, opens "Quotes" from the navigation (the page is an iframe
that authenticates with the UI's ``_token`` cookie), waits for the chart of BINANCE:SOLUSDT, and
checks the shown prices against Elasticsearch. It also measures freshness from outside the page:
the test polls the DOM for each newly shown Kafka offset, notes the wall time it appeared, reads that
record's producer ``received_at`` from Kafka itself, and takes the difference (the page's own figure
is printed beside it, not trusted). It saves a screenshot under tests/artifacts/.
No browser is downloaded: Playwright drives /usr/bin/chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from elasticsearch import Elasticsearch

from quoteflow.liveview.service import epoch_ms
from tests.helpers.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
# Headless, and nothing that reaches out of this machine (its network is closed).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SYMBOL = "BINANCE:SOLUSDT"
DATA_TIMEOUT_S = 300  # the producer's first ticks, then the indexer's first windows
FRESHNESS_SAMPLE_S = 20
DOM_POLL_S = 0.02


def newest_document(es: Elasticsearch, topic: str, symbol: str) -> dict[str, Any] | None:
    """The newest document of ``symbol`` from ``topic`` in ``quotes-*`` (producer clock, then Kafka offset)."""
    resp = es.search(
        index="quotes-*",
        query={"bool": {"filter": [{"term": {"symbol": symbol}}, {"term": {"kafka.topic": topic}}]}},
        sort=[{"received_at": {"order": "desc"}}, {"kafka.offset": {"order": "desc"}}],
        size=1,
        ignore_unavailable=True,
        allow_no_indices=True,
    )
    hits = resp["hits"]["hits"]
    return hits[0]["_source"] | {"_id": hits[0]["_id"]} if hits else None


def watch_shown_ticks(last_price: Any, seconds: float) -> list[tuple[int, int, float, str]]:
    """``(partition, offset, wall ms when it appeared, shown price)`` of every tick the page newly shows."""
    seen: list[tuple[int, int, float, str]] = []
    previous = None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        partition, offset, text = last_price.evaluate("el => [el.dataset.partition, el.dataset.offset, el.textContent]")
        now_ms = time.time() * 1000
        if (partition, offset) != previous:
            if previous is not None and offset:  # the first one was on the page before the watch began
                seen.append((int(partition), int(offset), now_ms, text))
            previous = (partition, offset)
        time.sleep(DOM_POLL_S)
    return seen


def received_at_ms(bootstrap: str, topic: str, records: list[tuple[int, int]]) -> dict[tuple[int, int], dict]:
    """The Quote JSON of each ``(partition, offset)``, read from Kafka by assignment (no group, no commit)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "quoteflow-e2e-probe", "enable.auto.commit": False}
    )
    out: dict[tuple[int, int], dict] = {}
    try:
        for partition, offset in records:
            consumer.assign([TopicPartition(topic, partition, offset)])
            msgs = consumer.consume(num_messages=1, timeout=10)
            assert msgs and msgs[0].error() is None and msgs[0].offset() == offset, (
                f"cannot read {topic}[{partition}]@{offset}"
            )
            out[(partition, offset)] = json.loads(msgs[0].value())
    finally:
        consumer.close()
    return out


def check_quotes_view(
    airflow_url: str, username: str, password: str, es_url: str, kafka_bootstrap: str, topic: str, profile_dir: Path
) -> dict[str, Any]:
    """Drive the browser through the whole check; return the measured freshness."""
    from playwright.sync_api import sync_playwright

    es = Elasticsearch(es_url, request_timeout=30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(profile_dir),  # a fresh, empty profile for every run
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1440, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.goto(f"{airflow_url}/")
            page.get_by_label("Username").fill(username)
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{airflow_url}/", timeout=30_000)
            assert any(c["name"] == "_token" for c in browser.cookies()), "login set no _token cookie"

            page.get_by_role("button", name="Browse").click()
            page.get_by_role("menuitem", name="Quotes").click()
            page.wait_for_url("**/plugin/quotes**", timeout=30_000)
            frame = page.frame_locator("iframe[title='Quotes']")
            frame.locator("#symbol").select_option(SYMBOL, timeout=30_000)
            # Choosing a symbol reloads the page with ?symbol=…; the UI mirrors that into its own URL.
            page.wait_for_url("**symbol=BINANCE%3ASOLUSDT**", timeout=30_000)
            # The tick line is the "Ticks" mode of the chart (candles are the default). The reloaded page's
            # controls answer once it has its symbols.
            frame.locator("body[data-ready='1']").wait_for(timeout=30_000)
            frame.locator("#resolution").select_option("ticks", timeout=30_000)
            page.wait_for_url("**resolution=ticks**", timeout=30_000)
            chart = frame.locator(f"#chart[data-symbol='{SYMBOL}']")
            chart.wait_for(timeout=60_000)
            wait_until(
                "chart points for BINANCE:SOLUSDT",
                lambda: int(chart.get_attribute("data-points") or 0) >= 2,
                DATA_TIMEOUT_S,
                interval=0.5,
            )
            assert frame.locator("canvas").count() >= 1, "uPlot drew no canvas"

            # The price shown as indexed equals the newest document in Elasticsearch.
            indexed = frame.locator("#indexed-price")

            def indexed_matches() -> tuple[str, dict] | None:
                doc = newest_document(es, topic, SYMBOL)
                # One read of offset and text together: the page redraws every second.
                shown, text = indexed.evaluate("el => [el.dataset.offset, el.textContent]")
                if doc is None or shown != str(doc["kafka"]["offset"]):
                    return None
                return text, doc

            shown_text, doc = wait_until(
                "the newest ES document on the page", indexed_matches, DATA_TIMEOUT_S, interval=0.5
            )
            assert float(shown_text) == doc["price"], (
                f"page shows {shown_text}, ES newest {doc['_id']} has {doc['price']}"
            )

            # The live price (usually from the Kafka tail, ahead of the indexer) is the price ES gets for that record.
            last = frame.locator("#last-price")
            partition, offset, live_text = last.evaluate(
                "el => [el.dataset.partition, el.dataset.offset, el.textContent]"
            )
            doc_id = f"{topic}-{partition}-{offset}"
            live_doc = wait_until(f"document {doc_id} indexed", lambda: _doc_by_id(es, doc_id), 120, 2)
            assert float(live_text) == live_doc["price"], f"live price {live_text}, ES {doc_id} has {live_doc['price']}"

            # Freshness, measured by the test: when each new offset appeared in the DOM, minus its record's
            # received_at as Kafka holds it (both on this machine's clock).
            shown = watch_shown_ticks(last, FRESHNESS_SAMPLE_S)
            page_samples = [s["ms"] for s in frame.locator("body").evaluate("() => window.__quotesView.samples")]
            screenshot = ARTIFACTS / "quotes_view.png"
            page.screenshot(path=str(screenshot))

            # A bookmark of the UI URL opens the same view again.
            bookmark = page.url
            again = browser.new_page()
            again.goto(bookmark)
            again.frame_locator("iframe[title='Quotes']").locator(f"#chart[data-symbol='{SYMBOL}']").wait_for(
                timeout=60_000
            )
            again.close()
        finally:
            browser.close()
    # The replay feed streams several ticks a second per symbol and the page polls every second.
    assert len(shown) >= FRESHNESS_SAMPLE_S // 2, (
        f"the page showed only {len(shown)} new ticks in {FRESHNESS_SAMPLE_S} s"
    )
    records = received_at_ms(kafka_bootstrap, topic, [(p, o) for p, o, _, _ in shown])
    delays = []
    for partition, offset, seen_ms, text in shown:
        quote = records[(partition, offset)]
        assert float(text) == quote["price"], f"{topic}[{partition}]@{offset}: page shows {text}, Kafka has {quote}"
        delays.append(seen_ms - epoch_ms(quote["received_at"]))
    ordered = sorted(delays)
    freshness = {
        "measured_by": "test: DOM offset appearance (wall clock) − the record's received_at from Kafka",
        "samples": len(ordered),
        "p50_ms": round(statistics.median(ordered)),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))]),
        "max_ms": round(ordered[-1]),
        "page_reported_p50_ms": statistics.median(page_samples) if page_samples else None,
        "screenshot": str(screenshot.relative_to(ROOT)),
        "bookmark": bookmark,
    }
    (ARTIFACTS / "quotes_view_freshness.json").write_text(json.dumps(freshness, indent=2) + "\n")
    return freshness


def _doc_by_id(es: Elasticsearch, doc_id: str) -> dict[str, Any] | None:
    resp = es.search(index="quotes-*", query={"ids": {"values": [doc_id]}}, size=1, ignore_unavailable=True)
    hits = resp["hits"]["hits"]
    return hits[0]["_source"] if hits else None


def test_quotes_view_shows_live_prices_in_the_airflow_ui(pipeline, tmp_path: Path) -> None:
    freshness = check_quotes_view(
        pipeline.airflow_url,
        pipeline.username,
        pipeline.password,
        pipeline.es_url,
        pipeline.kafka_bootstrap,
        pipeline.topic,
        tmp_path / "profile",
    )
    print(f"quotes view freshness (received_at → shown): {freshness}")
    # The bar: fresh within ~2 s even between indexer windows.
    assert freshness["p95_ms"] <= 2500, freshness
