"""Bar and gap documents, their templates, and the Names value the indexer, backfill and reconcile take."""

from __future__ import annotations

import orjson
import pytest

from quoteflow.bars import FIELDS as BAR_FIELDS
from quoteflow.bars import InvalidBar, encode_bar
from quoteflow.elastic.bulk import BulkItem, BulkWriter
from quoteflow.elastic.documents import bar_lines, gap_lines, month_index_name
from quoteflow.elastic.template import bar_mappings, bars_template, gap_mappings, gaps_template
from quoteflow.gaps import FIELDS as GAP_FIELDS
from quoteflow.gaps import InvalidGap, encode_gap, make_gap
from quoteflow.quotes import InvalidQuote
from quoteflow.settings import ConfigError
from quoteflow.streams import Kind, Names, Stream


def _bar(symbol: str = "BINANCE:SOLUSDT", **overrides) -> bytes:
    fields = dict(
        symbol=symbol,
        resolution="1",
        start="2026-12-02T02:41:00Z",
        open=1.0,
        high=2.0,
        low=0.5,
        close=1.5,
        volume=3.0,
        closed=True,
        origin="live",
        received_at="2026-12-02T02:41:07.125Z",
    )
    fields.update(overrides)
    return encode_bar(**fields)


def test_bar_lines_are_versioned_by_offset_in_the_month_of_start() -> None:
    action, source, tail = bar_lines(_bar(), "bars.t", 1, 77, 1_764_643_267_125, "bars-x-").split(b"\n")
    assert tail == b""
    assert orjson.loads(action) == {
        "index": {
            "_index": "bars-x-2026.12",
            "_id": "BINANCE:SOLUSDT-1-2026-12-02T02:41:00Z",
            "version": 77,
            "version_type": "external_gte",
        }
    }
    doc = orjson.loads(source)
    assert set(doc) == {*BAR_FIELDS, "@timestamp", "kafka"} and doc["@timestamp"] == "2026-12-02T02:41:00Z"
    assert doc["kafka"] == {"topic": "bars.t", "partition": 1, "offset": 77, "timestamp": "2025-12-02T02:41:07.125Z"}


def test_a_symbol_spec_with_quotes_makes_a_valid_action_line() -> None:
    spec = '={"symbol":"BINANCE:SOLUSDT","session":"regular"}'
    action = orjson.loads(bar_lines(_bar(spec), "t", 0, 0, 0, "bars-x-").split(b"\n")[0])
    assert action["index"]["_id"] == f"{spec}-1-2026-12-02T02:41:00Z"


def test_an_id_over_512_bytes_is_refused_before_elasticsearch_sees_it() -> None:
    with pytest.raises(InvalidQuote) as caught:
        bar_lines(_bar("€" * 200), "t", 0, 0, 0, "bars-x-")
    assert caught.value.reason == "schema" and "over Elasticsearch's 512" in caught.value.detail


def test_bad_bars_and_gaps_raise_invalid_quote_subclasses() -> None:
    with pytest.raises(InvalidBar):
        bar_lines(b'{"schema": 1}', "t", 0, 0, 0, "bars-x-")
    with pytest.raises(InvalidGap):
        gap_lines(b"[]", "t", 0, 0, 0, "gaps-x-")


def test_gap_lines_use_the_gap_id_and_a_plain_index_op() -> None:
    gap = make_gap("stall", 1_764_643_260.5, 1_764_643_290.0, ["BINANCE:SOLUSDT"], recorded_at=1_764_643_291.0)
    action, source, _ = gap_lines(encode_gap(gap), "gaps.t", 0, 5, 0, "gaps-x-").split(b"\n")
    assert orjson.loads(action) == {"index": {"_index": "gaps-x-2025.12", "_id": gap["gap_id"]}}
    doc = orjson.loads(source)
    assert set(doc) == {*GAP_FIELDS, "@timestamp", "kafka"} and doc["@timestamp"] == gap["start"]


def test_templates_map_exactly_the_contract_fields_strictly() -> None:
    assert set(bar_mappings()["properties"]) == {*BAR_FIELDS, "@timestamp", "kafka"}
    assert set(gap_mappings()["properties"]) == {*GAP_FIELDS, "@timestamp", "kafka"}
    assert bar_mappings()["properties"]["closed"] == {"type": "boolean"}
    assert bar_mappings()["properties"]["volume"] == {"type": "double"}
    assert gap_mappings()["properties"]["end"] == {"type": "date"}
    assert bars_template()["index_patterns"] == ["bars-*"] and gaps_template()["index_patterns"] == ["gaps-*"]
    assert bars_template()["template"]["mappings"]["dynamic"] == "strict"
    assert month_index_name("p-", "2026-01-31T23:59:59Z") == "p-2026.01"


def test_a_version_conflict_is_stale_and_other_errors_keep_their_meaning() -> None:
    items = [BulkItem(b"", "bars.t", 0, i) for i in range(4)]
    response = {
        "errors": True,
        "items": [
            {"index": {"status": 201}},
            {"index": {"status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "old"}}},
            {"index": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "bad"}}},
            {"index": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "busy"}}},
        ],
    }
    indexed, rejected, retry, _problem, stale = BulkWriter._sort_items(items, response)
    assert (indexed, [r.item.offset for r in rejected], [i.offset for i in retry], stale) == (1, [2], [3], ["bars.t"])


def test_names_route_topics_to_streams_and_refuse_what_cannot_work() -> None:
    names = Names((Stream(Kind.QUOTES, "q", "quotes-x-"), Stream(Kind.BARS, "b", "bars-x-")), "dlq", "g")
    assert names.stream("b").versioned and not names.stream("q").versioned
    assert names.of_kind("gaps") is None and names.only("bars").topics == ["b"]
    with pytest.raises(ConfigError, match="none of this job's streams"):
        names.stream("other")
    with pytest.raises(ConfigError, match="no gaps stream"):
        names.only("gaps")
    with pytest.raises(ConfigError, match="must differ"):
        Names((Stream(Kind.QUOTES, "q", "quotes-x-"), Stream(Kind.BARS, "q", "bars-x-")))
    with pytest.raises(ConfigError, match="must be lowercase"):
        Names((Stream(Kind.QUOTES, "q", "Quotes-"),))
    assert Names.resolve(None, {"topic": "t", "group_id": "g2"}) == Names.quotes_only("t", group_id="g2")
    with pytest.raises(TypeError, match="not both"):
        Names.resolve(names, {"topic": "t"})
    with pytest.raises(TypeError, match="unexpected"):
        Names.resolve(None, {"tpoic": "t"})
