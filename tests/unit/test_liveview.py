"""The live view's own pieces: range parsing, bucket widths, timestamps, the newest tailed record, bounded waits."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from quoteflow.liveview.elastic_view import bucket_interval_s
from quoteflow.liveview.kafka_view import TailRecord
from quoteflow.liveview.service import (
    BACKEND_TIMEOUT_S,
    BackendUnavailable,
    KafkaBusy,
    LiveNames,
    LiveView,
    Outage,
    _newest_in_tail,
    epoch_ms,
    parse_range,
)


@pytest.mark.parametrize(("text", "seconds"), [("15m", 900), ("1h", 3600), ("90s", 90), ("900", 900), ("1d", 86400)])
def test_parse_range_accepts_a_number_with_a_unit(text: str, seconds: int) -> None:
    assert parse_range(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "15 minutes", "0s", "2d", "-5m"])
def test_parse_range_refuses_anything_else_and_says_the_format(text: str) -> None:
    with pytest.raises(ValueError, match="15m|between 1s and 24h"):
        parse_range(text)


@pytest.mark.parametrize(("range_s", "width"), [(60, 1), (300, 1), (900, 5), (3600, 15), (86400, 300)])
def test_bucket_width_keeps_at_most_300_points(range_s: int, width: int) -> None:
    assert bucket_interval_s(range_s) == width
    assert range_s / width <= 300


def test_epoch_ms_reads_the_contracts_timestamps() -> None:
    assert epoch_ms("2026-11-28T02:00:00.123Z") == 1795831200123
    assert epoch_ms("2026-11-28T02:00:00Z") == 1795831200000


def _rec(symbol: str, received_at: str, offset: int, valid: bool = True) -> TailRecord:
    quote = {"symbol": symbol, "received_at": received_at, "price": 1.0} if valid else None
    return TailRecord(partition=0, offset=offset, timestamp_ms=0, key=symbol, value=quote)


def test_newest_in_tail_uses_the_producer_clock_then_the_offset_and_skips_invalid_records() -> None:
    records = [
        _rec("A", "2026-11-28T02:00:01.000Z", 5),
        _rec("A", "2026-11-28T02:00:01.000Z", 7),
        _rec("A", "2026-11-28T02:00:00.999Z", 9),
        _rec("A", "2026-11-28T02:00:09.000Z", 10, valid=False),
        _rec("B", "2026-11-28T02:00:02.000Z", 1),
    ]
    newest = _newest_in_tail(records, ["A", "C"])
    assert set(newest) == {"A"}
    assert newest["A"].offset == 7


# ---------------------------------------------------------------- bounded waits on a down backend
# A real confluent-kafka client against a loopback port nobody listens on: no broker, no mock.


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dead_kafka_view():
    view = LiveView(lambda: None, {"bootstrap.servers": f"127.0.0.1:{_closed_port()}"}, outage_ttl_s=3.0)
    yield view
    view.close()


def _timed(fn):
    started = time.monotonic()
    try:
        fn()
    except BackendUnavailable as exc:
        return time.monotonic() - started, exc
    raise AssertionError("expected BackendUnavailable")


def test_a_down_broker_fails_within_the_backend_timeout_then_at_once_until_the_outage_ttl(dead_kafka_view) -> None:
    took, first = _timed(lambda: dead_kafka_view.tail("quotes.tradingview"))
    assert BACKEND_TIMEOUT_S - 0.5 < took < BACKEND_TIMEOUT_S + 1.0, took
    assert "Kafka at 127.0.0.1:" in str(first) and "tailing quotes.tradingview" in str(first)
    took, again = _timed(lambda: dead_kafka_view.tail("quotes.tradingview"))
    assert took < 0.1 and "retrying in" in str(again) and again.retry_after_s <= 3.0
    time.sleep(3.1)  # the outage is forgotten: the broker is asked again, and waited for again
    took, _ = _timed(lambda: dead_kafka_view.tail("quotes.tradingview"))
    assert took > BACKEND_TIMEOUT_S - 0.5, took


def test_a_request_that_finds_kafka_busy_is_answered_at_once(dead_kafka_view) -> None:
    slow = threading.Thread(target=lambda: _timed(lambda: dead_kafka_view.tail("quotes.tradingview")))
    slow.start()
    try:
        time.sleep(0.3)  # the first request now waits on the broker, holding the consumer
        took, busy = _timed(lambda: dead_kafka_view.tail("quotes.tradingview"))
        assert isinstance(busy, KafkaBusy) and took < 0.1, (took, busy)
        names = LiveNames(topic="quotes.tradingview")
        took, busy = _timed(lambda: dead_kafka_view.health(names, {}))
        assert isinstance(busy, KafkaBusy) and took < 0.1, (took, busy)
    finally:
        slow.join()


def test_outage_repeats_the_last_failure_only_for_its_ttl() -> None:
    outage = Outage(ttl_s=0.3)
    outage.check()  # nothing failed yet
    err = outage.failed("Kafka at x did not answer tailing t: down")
    assert str(err) == "Kafka at x did not answer tailing t: down" and err.retry_after_s == 0.3
    with pytest.raises(BackendUnavailable, match=r"down \(retrying in 0\.\d s\)"):
        outage.check()
    time.sleep(0.35)
    outage.check()
    outage.failed("again")
    outage.recovered()
    outage.check()


def test_a_down_broker_does_not_flood_the_log_with_reconnects(dead_kafka_view, capfd) -> None:
    """librdkafka logs every failed connect to stderr; the view's clients retry gently: ~18 lines in 5 s, not ~105."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            dead_kafka_view.tail("quotes.tradingview")
        except BackendUnavailable:
            pass
        time.sleep(0.2)
    # Only this view's clients: a client another test left behind may be failing on another port.
    address = dead_kafka_view._kafka_config["bootstrap.servers"]
    lines = [line for line in capfd.readouterr().err.splitlines() if f"Connect to ipv4#{address} " in line]
    shown = "\n".join(lines[:5])
    assert 1 <= len(lines) <= 30, f"{len(lines)} reconnect lines in 5 s (105 with librdkafka defaults):\n{shown}"


# ---------------------------------------------------------------- candles (bars_view)


def _minute(t_ms: int, o: float, h: float, low: float, c: float, v: float | None, closed: bool = True) -> dict:
    return {"t": t_ms, "open": o, "high": h, "low": low, "close": c, "volume": v, "closed": closed}


def test_aggregate_takes_first_open_last_close_extremes_and_summed_volume_per_utc_bucket() -> None:
    from quoteflow.liveview.bars_view import aggregate

    day = epoch_ms("2026-12-02T00:00:00Z")
    minutes = [
        _minute(day + 4 * 60_000, 10, 12, 9, 11, 1.5),  # 00:04 → bucket 00:00
        _minute(day + 2 * 60_000, 8, 15, 7, 10, None),  # given out of order: 00:02 is the bucket's first minute
        _minute(day + 5 * 60_000, 11, 11.5, 10.5, 11, None),  # 00:05 → next bucket, no volume at all
        _minute(day + 9 * 60_000, 11, 13, 6, 12, None, closed=False),
    ]
    assert aggregate(minutes, "5") == [
        {"t": day, "open": 8, "high": 15, "low": 7, "close": 11, "volume": 1.5, "closed": True, "bars": 2},
        {"t": day + 300_000, "open": 11, "high": 13, "low": 6, "close": 12, "volume": None, "closed": False, "bars": 2},
    ]
    (daily,) = aggregate(minutes, "1D")
    assert (daily["t"], daily["open"], daily["close"], daily["high"], daily["low"]) == (day, 8, 12, 15, 6)


def test_resolutions_and_candle_ranges_are_checked_and_say_the_choices() -> None:
    from quoteflow.liveview.bars_view import floor_ms, resolution_seconds
    from quoteflow.liveview.service import candle_range

    assert [resolution_seconds(r) for r in ("1", "5", "60", "1D")] == [60, 300, 3600, 86400]
    with pytest.raises(ValueError, match=r"'15' is not one of 1 \(1m\), 5 \(5m\), 60 \(1h\), 1D \(1D\)"):
        resolution_seconds("15")
    assert candle_range("60", None) == 300 * 3600  # the default: 300 bars
    assert candle_range("1D", "365d") == 365 * 86400
    with pytest.raises(ValueError, match=r"between 1s and 2000m at 1m \(2000 candles\)"):
        candle_range("1", "2d")
    assert floor_ms(epoch_ms("2026-12-02T02:41:59.999Z"), 3600) == epoch_ms("2026-12-02T02:00:00Z")
