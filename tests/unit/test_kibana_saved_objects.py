"""kibana/*.ndjson: every object parses, every reference resolves, every field a visualization uses is mapped."""

from __future__ import annotations

import json
from typing import Any

import pytest

from quoteflow.elastic.template import quote_mappings
from quoteflow.kibana import read_saved_objects
from quoteflow.settings import DATA_VIEW_ID, INDEX_PATTERN

JSON_STRING_ATTRIBUTES = ("visState", "uiStateJSON", "panelsJSON", "optionsJSON")


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return read_saved_objects()


def _mapped_fields() -> dict[str, str]:
    out: dict[str, str] = {}

    def walk(props: dict[str, Any], prefix: str) -> None:
        for name, spec in props.items():
            if "properties" in spec:
                walk(spec["properties"], f"{prefix}{name}.")
            else:
                out[f"{prefix}{name}"] = spec["type"]

    walk(quote_mappings()["properties"], "")
    return out


def test_objects_parse_with_unique_ids_and_expected_kinds(objects) -> None:
    assert objects, "kibana/*.ndjson holds no saved objects"
    keys = [(o["type"], o["id"]) for o in objects]
    assert len(keys) == len(set(keys)), f"duplicate saved objects: {keys}"
    for obj in objects:
        assert isinstance(obj["attributes"], dict) and isinstance(obj.get("references", []), list)
        for name in JSON_STRING_ATTRIBUTES:
            if name in obj["attributes"]:
                json.loads(obj["attributes"][name])
        meta = obj["attributes"].get("kibanaSavedObjectMeta")
        if meta:
            json.loads(meta["searchSourceJSON"])
    kinds = sorted(o["type"] for o in objects)
    assert kinds == ["dashboard", "index-pattern", "visualization", "visualization"]


def test_every_reference_resolves(objects) -> None:
    present = {(o["type"], o["id"]) for o in objects}
    for obj in objects:
        names = {ref["name"] for ref in obj.get("references", [])}
        for ref in obj.get("references", []):
            assert (ref["type"], ref["id"]) in present, f"{obj['id']} references missing {ref}"
        meta = obj["attributes"].get("kibanaSavedObjectMeta")
        if meta:
            index_ref = json.loads(meta["searchSourceJSON"]).get("indexRefName")
            assert index_ref is None or index_ref in names, f"{obj['id']}: indexRefName {index_ref} unresolved"
        if obj["type"] == "dashboard":
            panels = json.loads(obj["attributes"]["panelsJSON"])
            assert len(panels) == 2
            for panel in panels:
                ref = panel["panelRefName"]
                assert ref in names or f"{panel['panelIndex']}:{ref}" in names, f"panel {ref} unresolved"


def test_data_view_matches_settings_and_template(objects) -> None:
    (view,) = [o for o in objects if o["type"] == "index-pattern"]
    assert view["id"] == DATA_VIEW_ID
    assert view["attributes"]["title"] == INDEX_PATTERN
    assert _mapped_fields()[view["attributes"]["timeFieldName"]] == "date"


def test_every_field_a_visualization_uses_exists_in_the_template(objects) -> None:
    fields = _mapped_fields()
    used: set[str] = set()
    for obj in objects:
        if obj["type"] != "visualization":
            continue
        for agg in json.loads(obj["attributes"]["visState"])["aggs"]:
            for key in ("field", "sortField"):
                if key in agg["params"]:
                    used.add(agg["params"][key])
                    assert agg["params"][key] in fields, f"{obj['id']} uses unmapped field {agg['params'][key]}"
    assert {"price", "symbol", "@timestamp"} <= used


def test_line_chart_splits_price_over_time_by_symbol(objects) -> None:
    vis = {o["id"]: json.loads(o["attributes"]["visState"]) for o in objects if o["type"] == "visualization"}
    line = vis["quotes-price-by-symbol"]
    assert line["type"] == "line"
    by_schema = {a["schema"]: a for a in line["aggs"]}
    assert by_schema["metric"]["params"]["field"] == "price"
    assert by_schema["segment"]["type"] == "date_histogram" and by_schema["segment"]["params"]["field"] == "@timestamp"
    assert by_schema["group"]["type"] == "terms" and by_schema["group"]["params"]["field"] == "symbol"
    table = vis["quotes-latest"]
    assert table["type"] == "table"
    assert table["aggs"][0]["params"]["field"] == "symbol"
    assert all(a["params"]["sortOrder"] == "desc" for a in table["aggs"] if a["type"] == "top_hits")


def test_dashboard_shows_last_15_minutes_refreshing_every_5_seconds(objects) -> None:
    (dash,) = [o for o in objects if o["type"] == "dashboard"]
    attrs = dash["attributes"]
    assert attrs["timeRestore"] is True
    assert (attrs["timeFrom"], attrs["timeTo"]) == ("now-15m", "now")
    assert attrs["refreshInterval"] == {"pause": False, "value": 5000}
