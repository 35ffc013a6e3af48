"""The live view's pure pieces: range parsing, bucket widths, timestamps, picking the newest tailed record."""

from __future__ import annotations

import pytest

from include.quoteflow.liveview.elastic_view import bucket_interval_s
from include.quoteflow.liveview.kafka_view import TailRecord
from include.quoteflow.liveview.service import _newest_in_tail, epoch_ms, parse_range


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
    return TailRecord(partition=0, offset=offset, timestamp_ms=0, key=symbol, quote=quote)


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
