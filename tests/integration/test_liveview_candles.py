"""The live view's candles through Airflow's API server app, against real Kafka and Elasticsearch.

150 one-minute bars of one symbol go to a fresh bars topic, then versions of the two newest bars, as
TradingView's ``du`` updates would; the indexer's work is done by hand (each bar's newest indexed
version, with its offset as the version), except for the forming bar's updates, which exist only in
Kafka. Candles at 1m, 5m, 1h and 1D must equal the aggregation of each bar's newest version (open =
first, close = last, high = max, low = min, volume = sum, null when no minute had one), and the gap
events of the symbol in range, from ES and from the gaps topic's tail, must be listed.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest
from confluent_kafka import Producer

from quoteflow.bars import BAR_HEADERS, bar_id, bar_key, encode_bar
from quoteflow.elastic.template import bar_mappings, gap_mappings
from quoteflow.gaps import GAP_HEADERS, encode_gap, make_gap
from quoteflow.liveview import bars_view
from quoteflow.liveview.bars_view import epoch_ms
from quoteflow.quotes import format_timestamp
from tests.integration.test_liveview_api import client  # noqa: F401 - the module-scoped API server fixture

SYMBOL, OTHER = "BINANCE:SOLUSDT", "BINANCE:BTCUSDT"
MINUTES = 150
FORMING_UPDATES = 250  # more than the view's tail of 200 records: older bars come from ES only
NO_VOLUME_BLOCK = 5  # one aligned 5-minute block without volumes


def _expected(bars: dict[int, dict[str, Any]], width_s: int) -> list[tuple]:
    """Candles computed here, independently of the view: group by UTC-aligned bucket start."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for t in sorted(bars):
        groups.setdefault(t - t % (width_s * 1000), []).append(bars[t])
    out = []
    for key in sorted(groups):
        minutes = groups[key]
        volumes = [b["volume"] for b in minutes if b["volume"] is not None]
        out.append(
            (
                key,
                minutes[0]["open"],
                max(b["high"] for b in minutes),
                min(b["low"] for b in minutes),
                minutes[-1]["close"],
                sum(volumes) if volumes else None,
            )
        )
    return out


def _shown(answer: dict[str, Any]) -> list[tuple]:
    return [(c["t"], c["open"], c["high"], c["low"], c["close"], c["volume"]) for c in answer["candles"]]


def _approx(rows: list[tuple]) -> list[tuple]:
    """Volumes summed by ES in another order may differ in the last bit; prices are copied, never computed."""
    return [(*r[:5], None if r[5] is None else pytest.approx(r[5], rel=1e-12)) for r in rows]


def _random_bar(rng: random.Random, t_ms: int, no_volume: bool) -> dict[str, Any]:
    o = round(rng.uniform(100, 200), 4)
    c = round(o + rng.uniform(-3, 3), 4)
    return {
        "start": format_timestamp(t_ms // 1000),
        "open": o,
        "high": round(max(o, c) + rng.uniform(0, 2), 4),
        "low": round(min(o, c) - rng.uniform(0, 2), 4),
        "close": c,
        "volume": None if no_volume else round(rng.uniform(1, 1000), 3),
    }


@pytest.fixture
def candle_data(kafka_bootstrap, make_topic, es_client, fresh_index_prefix, monkeypatch):
    """Bars and gaps in fresh topics and indices; the view is pointed at them through ``[quoteflow]``."""
    rng = random.Random(11)
    bars_topic = make_topic(partitions=1, config={"message.timestamp.type": "LogAppendTime"})
    gaps_topic = make_topic(partitions=1, config={"message.timestamp.type": "LogAppendTime"})
    now_ms = int(time.time() * 1000)
    last_minute = now_ms - now_ms % 60_000
    starts = [last_minute - (MINUTES - 1 - i) * 60_000 for i in range(MINUTES)]
    no_volume_from = next(t for t in starts[10:] if t % 300_000 == 0)
    plan: list[tuple[dict[str, Any], bool, str]] = []  # (bar fields, closed, origin) in produce order
    for i, t in enumerate(starts):
        no_volume = no_volume_from <= t < no_volume_from + NO_VOLUME_BLOCK * 60_000
        plan.append((_random_bar(rng, t, no_volume), i < MINUTES - 1, "history"))
    # The bar before the forming one gets three more versions (the last one closes it) ...
    prev = plan[-2][0]
    for step in range(3):
        plan.append((prev | {"high": prev["high"] + step + 1, "close": prev["close"] + 0.5 * step}, step == 2, "live"))
    # ... and the forming bar many du updates, each a little higher.
    forming = plan[MINUTES - 1][0]
    for step in range(FORMING_UPDATES):
        high = round(forming["high"] + step * 0.01, 4)
        plan.append((forming | {"high": high, "close": round(high - 0.005, 4)}, False, "live"))

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "linger.ms": 5})
    delivered: list = []
    for fields, closed, origin in plan:
        producer.produce(
            bars_topic,
            key=bar_key(SYMBOL, "1").encode(),
            value=encode_bar(symbol=SYMBOL, resolution="1", closed=closed, origin=origin, **fields),
            headers=BAR_HEADERS,
            on_delivery=lambda err, msg: delivered.append((err, msg)),
        )
    assert producer.flush(30) == 0 and all(err is None for err, _ in delivered)
    records = sorted((msg.offset(), json.loads(msg.value()), msg) for _, msg in delivered)
    newest: dict[int, tuple[int, dict[str, Any], Any]] = {}
    for offset, value, msg in records:
        newest[epoch_ms(value["start"])] = (offset, value, msg)
    forming_t = starts[-1]
    # The indexer has written every bar's newest version, except the forming bar's updates (only its history).
    indexed = {t: rec for t, rec in newest.items() if t != forming_t}
    indexed[forming_t] = next(r for r in records if epoch_ms(r[1]["start"]) == forming_t)
    assert indexed[forming_t][0] < newest[forming_t][0] - FORMING_UPDATES + 1

    bars_prefix = f"{fresh_index_prefix}bars-tradingview-"
    for offset, value, msg in indexed.values():
        index = bars_prefix + value["start"][:7].replace("-", ".")
        if not es_client.indices.exists(index=index):
            es_client.indices.create(index=index, mappings=bar_mappings())
        doc = value | {
            "@timestamp": value["start"],
            "kafka": {"topic": bars_topic, "partition": 0, "offset": offset, "timestamp": msg.timestamp()[1]},
        }
        es_client.index(
            index=index,
            id=bar_id(SYMBOL, "1", value["start"]),
            document=doc,
            version=offset,
            version_type="external_gte",
        )

    # Gaps: one indexed, one only in the gaps topic, one of another symbol, one long before the range.
    gap_es = make_gap("disconnect", starts[100] / 1000 + 10, starts[103] / 1000, [SYMBOL, OTHER], detail="closed")
    gap_tail = make_gap("stall", starts[140] / 1000 + 5, starts[141] / 1000 + 30, [SYMBOL], shard="1")
    gap_other = make_gap("stall", starts[120] / 1000, starts[121] / 1000, [OTHER])
    gap_old = make_gap("handover", now_ms / 1000 - 400 * 86400, now_ms / 1000 - 400 * 86400 + 60, [SYMBOL])
    gaps_prefix = f"{fresh_index_prefix}gaps-tradingview-"
    for gap in (gap_es, gap_other, gap_old):
        index = gaps_prefix + gap["start"][:7].replace("-", ".")
        if not es_client.indices.exists(index=index):
            es_client.indices.create(index=index, mappings=gap_mappings())
        es_client.index(index=index, id=gap["gap_id"], document=gap | {"@timestamp": gap["start"]})
    producer.produce(gaps_topic, key=gap_tail["gap_id"].encode(), value=encode_gap(gap_tail), headers=GAP_HEADERS)
    assert producer.flush(30) == 0
    es_client.indices.refresh(index=f"{fresh_index_prefix}*")

    monkeypatch.setenv("AIRFLOW__QUOTEFLOW__BARS_TOPIC", bars_topic)
    monkeypatch.setenv("AIRFLOW__QUOTEFLOW__GAPS_TOPIC", gaps_topic)
    monkeypatch.setenv("AIRFLOW__QUOTEFLOW__BARS_INDEX_PATTERN", f"{fresh_index_prefix}bars-*")
    monkeypatch.setenv("AIRFLOW__QUOTEFLOW__GAPS_INDEX_PATTERN", f"{fresh_index_prefix}gaps-*")
    final = {t: bars_view.base_bar(value, 0, offset) for t, (offset, value, _) in newest.items()}
    return {
        "final": final,
        "forming_t": forming_t,
        "no_volume_from": no_volume_from,
        "gaps": {"es": gap_es, "tail": gap_tail, "other": gap_other, "old": gap_old},
        "bars_index": f"{fresh_index_prefix}bars-*",
    }


def _candles(client_and_token, resolution: str, range_: str | None = None) -> dict[str, Any]:
    test_client, token = client_and_token
    path = f"/quotes-view/api/candles?symbol={SYMBOL}&resolution={resolution}" + (f"&range={range_}" if range_ else "")
    resp = test_client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["kafka_error"] is None, answer["kafka_error"]
    return answer


@pytest.mark.parametrize(("resolution", "width_s"), [("1", 60), ("5", 300), ("60", 3600), ("1D", 86400)])
def test_candles_are_the_newest_version_of_every_minute_aggregated_exactly(
    client,  # noqa: F811
    candle_data,
    resolution: str,
    width_s: int,
) -> None:
    answer = _candles(client, resolution)
    final = candle_data["final"]
    in_range = {t: bar for t, bar in final.items() if t >= answer["start_ms"]}
    assert len(in_range) == MINUTES  # the default range (300 bars) holds every seeded minute
    expected = _expected(in_range, width_s)
    assert _shown(answer) == _approx(expected)
    assert len(answer["candles"]) == len({t - t % (width_s * 1000) for t in in_range})
    assert answer["resolution_s"] == width_s and answer["bars_from_kafka"] == 1
    # The forming bar's last du update (only in Kafka) is what the newest candle ends with.
    forming = final[candle_data["forming_t"]]
    assert answer["candles"][-1]["close"] == forming["close"] and answer["candles"][-1]["closed"] is False
    assert answer["candles"][-1]["high"] >= forming["high"]
    if resolution == "1":
        # Each candle is its bar's newest version: the three-times-updated one has its closing version.
        assert [c["t"] for c in answer["candles"]] == sorted(in_range)
        previous = final[candle_data["forming_t"] - 60_000]
        assert answer["candles"][-2]["close"] == previous["close"] and answer["candles"][-2]["closed"] is True
    if resolution == "5":
        block = next(c for c in answer["candles"] if c["t"] == candle_data["no_volume_from"])
        assert block["volume"] is None and block["bars"] == NO_VOLUME_BLOCK


def test_elasticsearchs_aggregation_equals_the_same_candles_computed_from_the_minutes(es_client, candle_data) -> None:
    final = candle_data["final"]
    start, end = min(final), max(final)
    minutes = bars_view.base_bars(es_client, candle_data["bars_index"], SYMBOL, start, end)
    assert len(minutes) == MINUTES
    for resolution in ("5", "60", "1D"):
        in_es = bars_view.aggregated_bars(es_client, candle_data["bars_index"], SYMBOL, resolution, start, end)
        in_python = bars_view.aggregate(minutes, resolution)
        assert _shown({"candles": in_es}) == _approx(_shown({"candles": in_python})), resolution
        assert [c["bars"] for c in in_es] == [c["bars"] for c in in_python]
        assert sum(c["bars"] for c in in_es) == MINUTES


def test_gaps_of_the_symbol_in_range_come_from_elasticsearch_and_the_tail(client, candle_data) -> None:  # noqa: F811
    gaps = candle_data["gaps"]
    answer = _candles(client, "5")
    assert [g["gap_id"] for g in answer["gaps"]] == [gaps["es"]["gap_id"], gaps["tail"]["gap_id"]]
    shown = answer["gaps"][0]
    assert (shown["cause"], shown["start"], shown["end"], shown["detail"]) == (
        "disconnect",
        gaps["es"]["start"],
        gaps["es"]["end"],
        "closed",
    )
    assert answer["gaps"][1]["shard"] == "1"
    # A 1D chart of 300 days still leaves out the gap of 400 days ago.
    assert gaps["old"]["gap_id"] not in {g["gap_id"] for g in _candles(client, "1D")["gaps"]}
    assert gaps["old"]["gap_id"] in {g["gap_id"] for g in _candles(client, "1D", "500d")["gaps"]}


def test_a_narrower_range_has_fewer_candles_and_bad_input_is_a_422_naming_the_fix(client, candle_data) -> None:  # noqa: F811
    answer = _candles(client, "1", "30m")
    assert len(answer["candles"]) == sum(1 for t in candle_data["final"] if t >= answer["start_ms"]) <= 31
    test_client, token = client
    auth = {"Authorization": f"Bearer {token}"}
    resp = test_client.get(f"/quotes-view/api/candles?symbol={SYMBOL}&resolution=2", headers=auth)
    assert resp.status_code == 422 and "1 (1m), 5 (5m), 60 (1h), 1D (1D)" in resp.json()["detail"]
    resp = test_client.get(f"/quotes-view/api/candles?symbol={SYMBOL}&resolution=1&range=3d", headers=auth)
    assert resp.status_code == 422 and "2000 candles" in resp.json()["detail"]
    test_client.cookies.clear()
    assert test_client.get(f"/quotes-view/api/candles?symbol={SYMBOL}").status_code == 401
