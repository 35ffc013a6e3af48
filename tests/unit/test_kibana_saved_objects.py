"""kibana/*.ndjson: every object parses, every reference resolves, every field a visualization uses is mapped.

Aggregation-based visualizations are checked against the ``quotes`` template; the Vega candlestick
against the ``bars`` template: every field its query reads, its transforms compute from and its
encodings draw exists there, with a type that fits its use (temporal → date, quantitative → double,
nominal → keyword).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from quoteflow.elastic.template import bar_mappings, quote_mappings
from quoteflow.kibana import read_saved_objects
from quoteflow.settings import BARS_INDEX_PATTERN, DATA_VIEW_ID, INDEX_PATTERN

JSON_STRING_ATTRIBUTES = ("visState", "uiStateJSON", "panelsJSON", "optionsJSON")


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return read_saved_objects()


def _mapped_fields(mappings: dict[str, Any] | None = None) -> dict[str, str]:
    out: dict[str, str] = {}

    def walk(props: dict[str, Any], prefix: str) -> None:
        for name, spec in props.items():
            if "properties" in spec:
                walk(spec["properties"], f"{prefix}{name}.")
            else:
                out[f"{prefix}{name}"] = spec["type"]

    walk((mappings or quote_mappings())["properties"], "")
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
    assert kinds == ["dashboard", "index-pattern", "visualization", "visualization", "visualization"]


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
            assert len(panels) == 3
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
        if obj["type"] != "visualization" or json.loads(obj["attributes"]["visState"])["type"] == "vega":
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


# A Vega-Lite encoding type → the Elasticsearch field types that can feed it.
ENCODING_TYPES = {"temporal": {"date"}, "quantitative": {"double"}, "nominal": {"keyword"}}
SOURCE_REF = re.compile(r"datum\._source\.([A-Za-z_@][\w.@]*)")


def vega_field_uses(spec: dict[str, Any]) -> tuple[str, list[tuple[str, str | None, str]]]:
    """The index a Vega-Lite spec queries and every ``(ES field, encoding type or None, where)`` it uses.

    Encodings name the fields computed by ``calculate`` transforms (``datum._source.x`` → ``x``); each is
    traced back to the document field it copies, so a misspelt name anywhere is caught.
    """
    url = spec["data"]["url"]
    body = url.get("body", {})
    uses: list[tuple[str, str | None, str]] = [(url["%timefield%"], "temporal", "%timefield%")]
    uses += [(name, None, "_source") for name in body.get("_source", [])]
    uses += [(name, None, "sort") for entry in body.get("sort", []) for name in entry]
    aliases: dict[str, str] = {}
    for transform in spec.get("transform", []):
        expr = transform.get("calculate") or transform.get("filter") or ""
        refs = SOURCE_REF.findall(expr)
        uses += [(name, None, f"transform {expr!r}") for name in refs]
        if "calculate" in transform:
            assert len(refs) == 1, f"calculate {expr!r} should copy exactly one document field"
            aliases[transform["as"]] = refs[0]

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "field" in node:
                name = node["field"]
                assert name in aliases, f"{where}: encoding field {name!r} is not computed by any transform"
                uses.append((aliases[name], node.get("type"), f"{where}.field {name!r}"))
            for key, child in node.items():
                if key == "test":
                    for name in re.findall(r"datum\.(\w+)", child):
                        assert name in aliases, f"{where}: condition uses {name!r}, not computed by any transform"
                walk(child, f"{where}.{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{where}[{i}]")

    walk({k: v for k, v in spec.items() if k not in ("data", "transform")}, "spec")
    return url["index"], uses


def vega_field_errors(spec: dict[str, Any], mappings: dict[str, Any]) -> list[str]:
    """What is wrong with the fields of a Vega-Lite spec against an index template's mappings (empty: nothing)."""
    fields = _mapped_fields(mappings)
    errors = []
    for name, kind, where in vega_field_uses(spec)[1]:
        if name not in fields:
            errors.append(f"{where}: field {name!r} is not in the template")
        elif kind is not None and fields[name] not in ENCODING_TYPES[kind]:
            errors.append(f"{where}: field {name!r} is {fields[name]}, a {kind} encoding needs {ENCODING_TYPES[kind]}")
    return errors


def _vega_candles(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (vis,) = [o for o in objects if o["id"] == "bars-candles"]
    state = json.loads(vis["attributes"]["visState"])
    assert state["type"] == "vega"
    return json.loads(state["params"]["spec"])


def test_the_vega_candlestick_reads_bars_and_uses_only_bars_template_fields_with_fitting_types(objects) -> None:
    spec = _vega_candles(objects)
    index, uses = vega_field_uses(spec)
    assert index == BARS_INDEX_PATTERN
    assert vega_field_errors(spec, bar_mappings()) == []
    used = {name for name, _, _ in uses}
    assert {"start", "open", "high", "low", "close", "symbol", "resolution"} <= used
    # The candles are drawn from the prices: a rule low → high and a bar open → close, per symbol.
    layers = {
        layer["mark"] if isinstance(layer["mark"], str) else layer["mark"]["type"]: layer["encoding"]
        for layer in spec["spec"]["layer"]
    }
    assert (layers["rule"]["y"]["field"], layers["rule"]["y2"]["field"]) == ("low", "high")
    assert (layers["bar"]["y"]["field"], layers["bar"]["y2"]["field"]) == ("open", "close")
    assert spec["facet"]["row"]["field"] == "symbol"


@pytest.mark.parametrize(
    ("planted", "message"),
    [
        ('"datum._source.close"', "'closing' is not in the template"),
        ('"_source": ["symbol"', "'sym' is not in the template"),
    ],
)
def test_the_vega_check_catches_a_wrong_field_name(objects, planted: str, message: str) -> None:
    text = json.dumps(_vega_candles(objects))
    wrong = planted.replace("close", "closing") if "close" in planted else planted.replace("symbol", "sym")
    assert planted in text
    errors = vega_field_errors(json.loads(text.replace(planted, wrong, 1)), bar_mappings())
    assert any(message in e for e in errors), errors


def test_the_vega_check_catches_a_field_of_the_wrong_type(objects) -> None:
    spec = _vega_candles(objects)
    spec["transform"] = [
        t if t.get("as") != "open" else {"calculate": "datum._source.origin", "as": "open"} for t in spec["transform"]
    ]
    errors = vega_field_errors(spec, bar_mappings())
    assert any("'origin' is keyword, a quantitative encoding" in e for e in errors), errors
