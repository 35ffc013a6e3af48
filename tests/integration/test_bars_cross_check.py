"""Reconcile's cross-check on real Kafka and Elasticsearch: ticks against the closed bars of their minute.

Seeded: a bar that agrees with its ticks (one tick on its high, two ticks in the same second whose
later one is the close), one with a tick above its high, one whose last tick is not its close, one
without ticks, and a forming bar. Reconcile names exactly the two that disagree.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest

from quoteflow import jobs
from quoteflow.bars import bar_id
from quoteflow.crosscheck import cross_check, resolution_seconds
from quoteflow.elastic.template import ensure_templates
from quoteflow.quotes import Quote, format_timestamp
from tests.helpers.indexing import LOG_APPEND, bar_record, produce

SOL, BTC, ETH, ADA = "BINANCE:SOLUSDT", "BINANCE:BTCUSDT", "BINANCE:ETHUSDT", "COINBASE:ADAUSD"


def _tick(symbol: str, price: float, epoch_s: int) -> tuple[bytes, bytes]:
    exchange, ticker = symbol.split(":")
    quote = Quote(
        symbol=symbol,
        exchange=exchange,
        ticker=ticker,
        price=price,
        event_time=format_timestamp(epoch_s),
        received_at=format_timestamp(time.time(), milliseconds=True),
    )
    return symbol.encode(), quote.to_json()


@pytest.fixture
def pipe(kafka_bootstrap, es_client, es_url, make_topic):
    ensure_templates(es_client)
    hexa = uuid.uuid4().hex[:10]
    prefixes = {k: f"{k}-test-{hexa}-" for k in ("quotes", "bars", "gaps")}
    yield jobs.Pipeline(
        kafka={"bootstrap.servers": kafka_bootstrap},
        es_args={"hosts": [es_url], "request_timeout": 60},
        topic=make_topic(1, LOG_APPEND),
        dlq_topic=make_topic(1),
        index_prefix=prefixes["quotes"],
        group_id=f"g-{hexa}",
        bars_topic=make_topic(1, LOG_APPEND),
        bars_index_prefix=prefixes["bars"],
        gaps_topic=make_topic(1, LOG_APPEND),
        gaps_index_prefix=prefixes["gaps"],
    )
    for prefix in prefixes.values():
        es_client.options(ignore_status=404).indices.delete(index=f"{prefix}*", expand_wildcards="all")


def test_reconcile_names_the_bars_that_disagree_with_their_ticks_and_not_the_consistent_one(
    pipe, kafka_bootstrap
) -> None:
    minute = int(time.time()) // 60 * 60 - 600  # a closed minute ten minutes ago
    start = format_timestamp(minute)
    ticks = [
        _tick(SOL, 100.5, minute + 5),
        _tick(SOL, 102.0, minute + 20),  # exactly the high: agrees
        _tick(SOL, 101.2, minute + 50),
        _tick(SOL, 101.0, minute + 50),  # same second, later offset: the last tick, equal to the close
        _tick(BTC, 50.0, minute + 10),
        _tick(BTC, 55.0, minute + 30),  # above the bar's high of 52
        _tick(BTC, 50.5, minute + 40),
        _tick(ETH, 10.0, minute + 10),
        _tick(ETH, 10.4, minute + 59),  # within the range, but the close says 10.2
        _tick(SOL, 101.0, minute + 65),  # in the next minute, whose bar is still forming: not checked
    ]
    bars = [
        bar_record(SOL, start, 101.0, open_=100.5, low=100.0, high=102.0),
        bar_record(BTC, start, 50.5, open_=50.0, low=49.0, high=52.0),
        bar_record(ETH, start, 10.2, open_=10.0, low=9.9, high=10.5),
        bar_record(ADA, start, 0.5),  # no ticks at all
        bar_record(SOL, format_timestamp(minute + 60), 90.0, low=80.0, high=95.0, closed=False),  # forming
    ]
    window_start = datetime.now(UTC)
    time.sleep(0.05)
    produce(kafka_bootstrap, pipe.topic, ticks, partition=0)
    produce(kafka_bootstrap, pipe.bars_topic, bars, partition=0)
    time.sleep(0.05)
    summary = jobs.index_window(pipe, window_start, datetime.now(UTC))
    assert summary["indexed"] == len(ticks) + len(bars)

    result = jobs.reconcile(pipe, repair=False, until="high", cross_check_hours=1)
    assert result["ok"]  # a quality figure beside the verdict, not part of it
    check = result["cross_check"]
    assert (check["bars"], check["checked"], check["without_ticks"], check["disagreeing"]) == (4, 3, 1, 2)
    named = {n["id"]: n for n in check["named"]}
    assert set(named) == {bar_id(BTC, "1", start), bar_id(ETH, "1", start)}
    assert bar_id(SOL, "1", start) not in named
    btc, eth = named[bar_id(BTC, "1", start)], named[bar_id(ETH, "1", start)]
    assert btc["why"] == "a tick at 55.0 is above the high 52.0" and btc["ticks"] == 3 and btc["tick_high"] == 55.0
    assert eth["why"] == "the last tick 10.4 is not the close 10.2" and eth["last_tick"] == 10.4

    # The named list is capped; the count is not.
    with pipe.elasticsearch() as es:
        capped = cross_check(es, pipe.index_prefix, pipe.bars_index_prefix, hours=1, max_named=1)
    assert capped["disagreeing"] == 2 and len(capped["named"]) == 1


def test_reconcile_without_a_cross_check_window_reports_none(pipe) -> None:
    result = jobs.reconcile(pipe, repair=False, cross_check_hours=0)
    assert "cross_check" not in result and result["ok"]


@pytest.mark.parametrize(
    ("resolution", "seconds"), [("1", 60), ("5", 300), ("60", 3600), ("30S", 30), ("1D", None), ("W", None)]
)
def test_bar_spans_checked_are_minutes_and_seconds(resolution: str, seconds: int | None) -> None:
    assert resolution_seconds(resolution) == seconds
