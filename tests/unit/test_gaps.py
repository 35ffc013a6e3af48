"""The gap event record: deterministic id, contract fields, validation that names what is wrong."""

from __future__ import annotations

import orjson
import pytest

from quoteflow.gaps import FIELDS, GAP_HEADERS, InvalidGap, decode_gap, encode_gap, gap_key, make_gap, validate_gap
from quoteflow.quotes import InvalidQuote


def _gap(**overrides: object) -> dict:
    gap = make_gap(
        "stall", 1_800_000_000.25, 1_800_000_150.5, ["BINANCE:SOLUSDT"], shard="3", detail="x", recorded_at=1.8e9 + 151
    )
    gap.update(overrides)
    return gap


def test_record_fields_and_id() -> None:
    gap = _gap()
    assert tuple(gap) == FIELDS
    assert gap == {
        "schema": 1,
        "source": "tradingview",
        "gap_id": "3-stall-1800000000250",
        "cause": "stall",
        "start": "2027-01-15T08:00:00.250Z",
        "end": "2027-01-15T08:02:30.500Z",
        "symbols": ["BINANCE:SOLUSDT"],
        "shard": "3",
        "detail": "x",
        "recorded_at": "2027-01-15T08:02:31.000Z",
    }
    assert gap_key(gap) == b"3-stall-1800000000250"
    assert GAP_HEADERS == [("schema", b"gap.v1")]
    assert decode_gap(encode_gap(gap)) == gap
    # Same gap, same id: a re-run writes the same document.
    assert make_gap("stall", 1_800_000_000.25, 1_800_000_999, [], shard="3")["gap_id"] == gap["gap_id"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cause": "lunch"}, "cause is 'lunch'"),
        ({"end": "2027-01-15T07:00:00.000Z"}, "is before start"),
        ({"start": "yesterday"}, "start:"),
        ({"symbols": "BINANCE:SOLUSDT"}, "symbols must be a list"),
        ({"detail": "y" * 201}, "detail must be null or a string"),
        ({"schema": True}, "schema is True"),
        ({"extra": 1}, "unknown field(s): extra"),
        ({"shard": ""}, "shard must be a non-empty string"),
    ],
)
def test_invalid_gaps_are_refused_with_reason_schema(change: dict, message: str) -> None:
    with pytest.raises(InvalidGap) as info:
        validate_gap(_gap(**change))
    assert info.value.reason == "schema" and message in str(info.value)
    assert isinstance(info.value, InvalidQuote)  # dead-lettered by the same code path as a bad quote


def test_missing_field_and_bad_json() -> None:
    gap = _gap()
    del gap["end"]
    with pytest.raises(InvalidGap, match="missing field"):
        validate_gap(gap)
    with pytest.raises(InvalidGap) as info:
        decode_gap(b"{not json")
    assert info.value.reason == "invalid_json"
    with pytest.raises(InvalidGap):
        decode_gap(None)
    assert orjson.loads(encode_gap(_gap(detail=None)))["detail"] is None
