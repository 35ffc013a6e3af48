"""Documents, ids, index names, the template and the pure helpers of the indexer."""

from __future__ import annotations

import random

import orjson
import pytest

from quoteflow.elastic.bulk import RetryPolicy
from quoteflow.elastic.documents import bulk_lines, check_index_prefix, document_id
from quoteflow.elastic.template import _comparable, index_template, quote_mappings
from quoteflow.indexer import IndexSummary, parse_bound
from quoteflow.kafka.reader import PartitionRange, group_ranges
from quoteflow.quotes import FIELDS, InvalidQuote, Quote
from quoteflow.settings import ConfigError


def _quote(**overrides) -> Quote:
    base = dict(
        symbol="BINANCE:SOLUSDT",
        exchange="BINANCE",
        ticker="SOLUSDT",
        price=123.5,
        received_at="2026-11-28T03:00:01.250Z",
        event_time="2026-11-27T23:59:59Z",
        volume=10.0,
    )
    base.update(overrides)
    return Quote(**base)


def test_bulk_lines_carry_deterministic_id_index_and_contract_fields() -> None:
    raw = _quote().to_json()
    action, source, tail = bulk_lines(raw, "quotes.tradingview", 2, 41, 1_764_298_801_250, "quotes-x-").split(b"\n")
    assert tail == b""
    meta = orjson.loads(action)["index"]
    assert meta == {"_index": "quotes-x-2026.11.27", "_id": "quotes.tradingview-2-41"}
    doc = orjson.loads(source)
    assert set(doc) == {*FIELDS, "@timestamp", "kafka"}
    assert doc["@timestamp"] == "2026-11-27T23:59:59Z"  # event_time wins over received_at
    assert doc["kafka"] == {
        "topic": "quotes.tradingview",
        "partition": 2,
        "offset": 41,
        "timestamp": "2025-11-28T03:00:01.250Z",
    }
    assert doc["price"] == 123.5 and doc["volume"] == 10.0


def test_timestamp_falls_back_to_received_at() -> None:
    action, source, _ = bulk_lines(_quote(event_time=None).to_json(), "t", 0, 0, 0, "p-").split(b"\n")
    assert orjson.loads(source)["@timestamp"] == "2026-11-28T03:00:01.250Z"
    assert orjson.loads(action)["index"]["_index"] == "p-2026.11.28"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "invalid_json"),
        (None, "invalid_json"),
        (orjson.dumps({**_quote().to_dict(), "price": "No disponible"}), "schema"),
        (orjson.dumps({**_quote().to_dict(), "extra": 1}), "schema"),
        (orjson.dumps({**_quote().to_dict(), "volume": "12"}), "schema"),
        (orjson.dumps([1, 2]), "schema"),
    ],
)
def test_bad_records_raise_invalid_quote_with_dlq_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidQuote) as info:
        bulk_lines(raw, "t", 0, 0, 0)
    assert info.value.reason == reason and info.value.detail


def test_document_id_and_prefix_checks() -> None:
    assert document_id("quotes.tradingview", 0, 7) == "quotes.tradingview-0-7"
    assert check_index_prefix("quotes-tradingview-") == "quotes-tradingview-"
    for bad in ("Quotes-", "", "-x", "a b", 'x"'):
        with pytest.raises(ConfigError):
            check_index_prefix(bad)


def test_template_maps_every_contract_field_strictly_with_core_types() -> None:
    mappings = quote_mappings()
    assert mappings["dynamic"] == "strict"
    props = mappings["properties"]
    assert set(props) == {*FIELDS, "@timestamp", "kafka"}
    assert set(props["kafka"]["properties"]) == {"topic", "partition", "offset", "timestamp"}
    types = {v.get("type") for v in props.values() if "type" in v}
    assert types <= {"keyword", "double", "date", "integer", "long"}
    assert props["price"]["type"] == "double" and props["symbol"]["type"] == "keyword"
    assert props["kafka"]["properties"]["offset"]["type"] == "long"


def test_template_comparison_ignores_string_vs_number_echoes() -> None:
    wanted = index_template()
    echoed = orjson.loads(orjson.dumps(wanted))
    echoed["template"]["settings"] = {"index": {k: str(v) for k, v in wanted["template"]["settings"].items()}}
    assert _comparable(echoed) == _comparable(wanted)
    echoed["template"]["mappings"]["properties"]["price"] = {"type": "float"}
    assert _comparable(echoed) != _comparable(wanted)


def test_retry_delays_are_jittered_capped_and_grow() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0, budget_s=5)
    rng = random.Random(1)
    for attempt in range(1, 20):
        cap = min(1.0, 0.1 * 2 ** (attempt - 1))
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.8  # full jitter reaches near the cap
    with pytest.raises(ValueError):
        RetryPolicy(initial_backoff_s=2, max_backoff_s=1)


def test_group_ranges_balances_and_covers_every_partition() -> None:
    ranges = [PartitionRange("t", p, 0, size) for p, size in enumerate([100, 90, 10, 5, 0, 50])]
    groups = group_ranges(ranges, 3)
    assert len(groups) == 3
    assert sorted(r for g in groups for r in g) == sorted(ranges)
    loads = sorted(sum(r.size for r in g) for g in groups)
    assert loads == [65, 90, 100]  # greedy, largest first
    assert group_ranges(ranges[:2], 8) == [[ranges[0]], [ranges[1]]]  # never an empty group
    with pytest.raises(ConfigError):
        group_ranges(ranges, 0)


def test_summary_merge_adds_up_groups() -> None:
    a = IndexSummary(read=3, indexed=2, dead_lettered=1, retries=4, elapsed_s=1.5, dead_letter_reasons={"schema": 1})
    b = IndexSummary(read=5, indexed=5, retries=1, elapsed_s=0.5, lag_records=7)
    total = IndexSummary.merge([a.to_dict(), b.to_dict()])
    assert (total.read, total.indexed, total.dead_lettered, total.retries) == (8, 7, 1, 5)
    assert total.elapsed_s == 1.5 and total.lag_records == 7 and total.dead_letter_reasons == {"schema": 1}


def test_parse_bound_accepts_z_and_naive_as_utc() -> None:
    assert parse_bound("2026-11-28T03:00:00Z").isoformat() == "2026-11-28T03:00:00+00:00"
    assert parse_bound("2026-11-28T03:00:00") == parse_bound("2026-11-28T03:00:00+00:00")
    with pytest.raises(ConfigError):
        parse_bound("yesterday")


def _variants() -> list[bytes | None]:
    good = _quote().to_dict()
    edits = [
        {},
        {"price": 7},
        {"price": True},
        {"schema": 1.0},
        {"schema": True},
        {"symbol": ""},
        {"source": "elsewhere"},
        {"event_time": None},
        {"event_time": "2026-13-01T00:00:00Z"},
        {"received_at": "2026-11-28 03:00:00"},
        {"received_at": None},
        {"volume": None, "bid": 1, "currency": None},
        {"volume": "1"},
        {"currency": 5},
        {"price": "No disponible"},
    ]
    out: list[bytes | None] = [orjson.dumps({**good, **edit}) for edit in edits]
    missing = dict(good)
    del missing["ask"]
    out += [orjson.dumps(missing), orjson.dumps({**good, "x": 1}), b"[]", b"nul", b"", None, b"1e999"]
    return out


@pytest.mark.parametrize("raw", _variants())
def test_fast_decode_agrees_with_the_contract_validator(raw: bytes | None) -> None:
    from quoteflow.elastic.documents import fast_decode
    from quoteflow.quotes import decode_quote

    try:
        expected = decode_quote(raw)
    except InvalidQuote as exc:
        with pytest.raises(InvalidQuote) as info:
            fast_decode(raw)
        assert (info.value.reason, info.value.detail) == (exc.reason, exc.detail)
    else:
        assert fast_decode(raw) == expected


def test_kafka_time_matches_format_timestamp() -> None:
    from quoteflow.elastic.documents import kafka_time
    from quoteflow.quotes import format_timestamp

    for ms in (0, 1, 999, 1_764_298_801_250, 1_764_298_801_999, 1_764_298_802_000):
        assert kafka_time(ms) == format_timestamp(ms / 1000, milliseconds=True)


def test_a_dead_letter_that_fits_is_written_whole_and_one_that_does_not_as_a_too_large_excerpt() -> None:
    from quoteflow.kafka.dlq import DeadLetterDraft, DeadLetterError, fit_letter, record_batch_bytes

    small = DeadLetterDraft(b"K", b'{"a"', "quotes.tradingview", 2, 77, "invalid_json", "bad", 0)
    key, value, headers = fit_letter(small, 2000)
    assert (key, value) == (b"K", b'{"a"') and dict(headers)["error.reason"] == b"invalid_json"

    big = DeadLetterDraft(b"K" * 5000, b"v" * 50_000, "quotes.tradingview", 2, 78, "schema", "price: bad", 0)
    key, value, headers = fit_letter(big, 20_000)
    found = dict(headers)
    assert record_batch_bytes(key, value, headers) <= 20_000
    assert found["error.reason"] == b"too_large" and found["error.original_reason"] == b"schema"
    assert (found["error.original_size"], found["error.original_key_size"]) == (b"50000", b"5000")
    assert (found["origin.topic"], found["origin.partition"], found["origin.offset"]) == (
        b"quotes.tradingview",
        b"2",
        b"78",
    )
    assert key == b"K" * 1024 and value and big.value.startswith(value)
    # The excerpt is as long as the limit allows: one byte more of the value would not fit.
    assert record_batch_bytes(key, big.value[: len(value) + 1], headers) > 20_000
    with pytest.raises(DeadLetterError, match="max.message.bytes"):
        fit_letter(DeadLetterDraft(None, b"x" * 500, "t" * 200, 0, 1, "schema", "d", 0), 150)
