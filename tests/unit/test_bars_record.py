"""The Bar record: fields, key and id, encoding, and every validation rule with its DLQ reason."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from quoteflow.bars import (
    BAR_HEADERS,
    FIELDS,
    InvalidBar,
    bar_id,
    bar_key,
    bar_start,
    decode_bar,
    encode_bar,
    make_bar,
    validate_bar,
)
from quoteflow.quotes import InvalidQuote


def _fields(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        symbol="BINANCE:SOLUSDT",
        resolution="1",
        start="2026-12-02T02:41:00Z",
        open=230.1,
        high=230.9,
        low=229.8,
        close=230.4,
        volume=1520.5,
        closed=True,
        origin="history",
        received_at="2026-12-02T02:42:00.125Z",
    )
    base.update(overrides)
    return base


def _value(**overrides: Any) -> dict[str, Any]:
    return {"schema": 1, "source": "tradingview", **_fields(**overrides)}


def test_encode_writes_exactly_the_contract_fields_in_order() -> None:
    raw = encode_bar(**_fields())
    data = orjson.loads(raw)
    assert tuple(data) == FIELDS
    assert data["schema"] == 1 and data["source"] == "tradingview"
    assert decode_bar(raw) == data
    assert BAR_HEADERS == [("schema", b"bar.v1")]


def test_key_and_id_follow_the_contract() -> None:
    assert bar_key("BINANCE:SOLUSDT", "1") == "BINANCE:SOLUSDT|1"
    assert bar_id("BINANCE:SOLUSDT", "1", "2026-12-02T02:41:00Z") == "BINANCE:SOLUSDT-1-2026-12-02T02:41:00Z"


def test_start_from_epoch_seconds_is_whole_seconds_utc() -> None:
    assert bar_start(1_764_643_260) == "2025-12-02T02:41:00Z"
    assert make_bar(**_fields(start=1_764_643_260.0))["start"] == "2025-12-02T02:41:00Z"


def test_received_at_defaults_to_now_with_milliseconds() -> None:
    fields = _fields()
    del fields["received_at"]
    received = make_bar(**fields)["received_at"]
    assert len(received) == len("2026-12-02T02:42:00.125Z") and received.endswith("Z")


def test_volume_sentinel_becomes_null_and_null_volume_is_valid() -> None:
    assert decode_bar(orjson.dumps(_value(volume=1e100)))["volume"] is None
    assert validate_bar(_value(volume=None))["volume"] is None
    assert validate_bar(_value(volume=0))["volume"] == 0


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"open": None}, "open must be a finite number"),
        ({"close": float("nan")}, "close must be a finite number"),
        ({"high": 1e100}, "no-value marker"),  # the sentinel is for volume only
        ({"low": True}, "low must be a finite number"),
        ({"volume": float("inf")}, "volume must be a finite number or null"),
        ({"volume": "12"}, "volume must be a finite number or null"),
        ({"low": 230.2}, "prices out of order"),  # low above open
        ({"high": 230.3}, "prices out of order"),  # high below close
        ({"low": 231.0, "high": 230.0, "open": 230.5, "close": 230.5}, "prices out of order"),
        ({"start": "2026-12-02T02:41:00.000Z"}, "start must be RFC 3339 UTC in whole seconds"),
        ({"start": "2026-12-02T02:41:00+00:00"}, "start must be RFC 3339 UTC in whole seconds"),
        ({"start": 1_764_643_260}, "start must be RFC 3339"),
        ({"received_at": "yesterday"}, "received_at must be an RFC 3339 UTC string"),
        ({"resolution": "1 minute"}, "is not a TradingView resolution"),
        ({"resolution": ""}, "resolution must be a non-empty string"),
        ({"resolution": 1}, "resolution must be a non-empty string"),
        ({"symbol": ""}, "symbol must be a non-empty string"),
        ({"symbol": "X" * 257}, "over the limit of 256"),
        ({"closed": 1}, "closed must be true or false"),
        ({"origin": "replay"}, "origin is 'replay'"),
        ({"schema": 2}, "schema is 2"),
        ({"schema": True}, "schema is True"),
        ({"source": "other"}, "source is 'other'"),
    ],
)
def test_invalid_values_are_refused_with_reason_schema(overrides: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidBar) as caught:
        validate_bar(_value(**overrides))
    assert caught.value.reason == "schema"
    assert needle in str(caught.value)


def test_unknown_and_missing_fields_are_named() -> None:
    with pytest.raises(InvalidBar, match="unknown field.*: price"):
        validate_bar({**_value(), "price": 1.0})
    value = _value()
    del value["closed"]
    with pytest.raises(InvalidBar, match="missing field.*: closed"):
        validate_bar(value)
    with pytest.raises(InvalidBar, match="not an object"):
        validate_bar([1, 2])


@pytest.mark.parametrize("raw", [b"{not json", None])
def test_undecodable_values_are_invalid_json(raw: bytes | None) -> None:
    with pytest.raises(InvalidBar) as caught:
        decode_bar(raw)
    assert caught.value.reason == "invalid_json"


def test_invalid_bar_is_an_invalid_quote_so_the_indexer_dead_letters_it_alike() -> None:
    with pytest.raises(InvalidQuote):
        encode_bar(**_fields(open=None))


@pytest.mark.parametrize("resolution", ["1", "5", "60", "240", "1D", "D", "1W", "W", "1M", "30S"])
def test_tradingview_resolutions_are_accepted(resolution: str) -> None:
    assert validate_bar(_value(resolution=resolution))["resolution"] == resolution


def test_a_flat_bar_is_valid() -> None:
    assert validate_bar(_value(open=5, high=5, low=5, close=5))["close"] == 5
