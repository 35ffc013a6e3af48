"""Chart sessions against every real chart-session frame, and the bar rules on built sequences.

Expected bars are read off the captured frames by hand and written literally here, so a decoder that
shifts a field, drops the volume or mis-times a bar fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from quoteflow.tradingview.chart import ChartSessions, Series, resolution_seconds, resolve_spec
from quoteflow.tradingview.protocol import MESSAGE, decode_message, encode_packet, frame

FRAMES = Path(__file__).resolve().parents[1] / "fixtures" / "tradingview" / "frames.jsonl"
RECEIVED = "2026-12-02T02:41:07.125Z"


def _lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in FRAMES.read_text().splitlines()]


def _chart_packets(raw: str) -> list[tuple[str, list[Any]]]:
    decoded = decode_message(raw)  # (one PerfectDreams frame is stored unframed: it decodes to no packet)
    return [
        (p.method, p.params)
        for p in decoded.packets
        if p.kind == MESSAGE and p.method and p.params and str(p.params[0]).startswith("cs_")
    ]


# Frame line → (session, series id, symbol, resolution) the capture's client had set up (from its own
# client frames: line 7 create_series 1D for NSE:JUNIPER, line 36 the 2019 15-minute BITSTAMP:BTCUSD series).
SESSIONS = {
    "cs_2iRcv6K6V6wl": ("sds_1", "NSE:JUNIPER", "1D"),
    "cs_1EScFq71Fjjf": ("sds_2", "NSE:JUNIPER", "188"),
    "cs_xkd21F2c6xIU": ("s1", "BITSTAMP:BTCUSD", "15"),
    "cs_MWY8N9BKPkOk": ("s1", "BATS:AAPL", "1D"),
    "cs_1lMtxZTkwtYN": ("sds_5", "X:Y", "1"),
    "cs_FgfPxXzCgyqG": ("sds_2", "X:Y", "1"),
    "cs_casjcotuguzl": ("sds_1", "CBOT_MINI:YM1!", "1"),
}
# The capture's own clock (tv.har message #27 at t=1766031048.72): the last daily bar is still forming.
NOW = {27: 1766031048.72}


def _sessions() -> ChartSessions:
    charts = ChartSessions([], ["1"])
    for cs, (series_id, symbol, resolution) in SESSIONS.items():
        series = Series(symbol, resolution, resolution_seconds(resolution))
        charts.series.append(series)
        charts.adopt(series, cs, series_id)
    return charts


def _decode(number: int, charts: ChartSessions) -> list[dict[str, Any]]:
    raw = _lines()[number]["raw"]
    bars: list[dict[str, Any]] = []
    for method, params in _chart_packets(raw):
        out = charts.handle(method, params, RECEIVED, now=NOW.get(number, 1.9e9))
        bars.extend(item for item in out if isinstance(item, dict))
    return bars


def _bar(symbol: str, res: str, start: str, o: float, h: float, lo: float, c: float, vol: Any, closed: bool) -> dict:
    return {
        "schema": 1,
        "source": "tradingview",
        "symbol": symbol,
        "resolution": res,
        "start": start,
        "open": o,
        "high": h,
        "low": lo,
        "close": c,
        "volume": vol,
        "closed": closed,
        "origin": "live",
        "received_at": RECEIVED,
    }


def test_every_chart_frame_is_covered() -> None:
    """The frames below are all the server frames that address a chart session: none is left untested."""
    lines = _lines()
    chart_frames = {i for i, d in enumerate(lines) if d["direction"] == "server->client" and _chart_packets(d["raw"])}
    assert chart_frames == {18, 19, 26, 27, 37, 40, 43, 44, 48, 50, 51, 52, 62, 63}


@pytest.mark.parametrize("number", [18, 19, 26, 37, 43, 44, 50, 51, 52, 63])
def test_lifecycle_and_study_frames_yield_no_bars(number: int) -> None:
    """study_loading/du with ``st``/study_completed/series_loading/timeframe/completed/empty maps: no bar, no error."""
    charts = _sessions()
    assert _decode(number, charts) == []
    assert not charts.stats.errors
    assert all(s.dropped is None for s in charts.series)


def test_history_burst_of_300_daily_bars() -> None:
    """tv.har #27: 300 daily NSE:JUNIPER bars; all closed except the forming last one, values as captured."""
    charts = _sessions()
    bars = _decode(27, charts)
    assert len(bars) == 300
    assert {b["origin"] for b in bars} == {"history"}
    assert [b["closed"] for b in bars] == [True] * 299 + [False]
    first, second, before_last, last = bars[0], bars[1], bars[-2], bars[-1]
    assert (first["start"], first["open"], first["high"], first["low"], first["close"], first["volume"]) == (
        "2024-10-07T03:45:00Z",
        361.5,
        363.7,
        351.0,
        354.1,
        90305.0,
    )
    assert (second["start"], second["open"], second["high"], second["low"], second["close"], second["volume"]) == (
        "2024-10-08T03:45:00Z",
        354.1,
        372.8,
        342.0,
        367.35,
        196879.0,
    )
    assert (before_last["start"], before_last["open"], before_last["close"], before_last["volume"]) == (
        "2025-12-17T03:45:00Z",
        258.69,
        258.55,
        175005.0,
    )
    assert (last["start"], last["open"], last["high"], last["low"], last["close"], last["volume"]) == (
        "2025-12-18T03:45:00Z",
        260.0,
        262.07,
        253.38,
        253.42,
        2851.0,
    )
    assert {b["symbol"] for b in bars} == {"NSE:JUNIPER"} and {b["resolution"] for b in bars} == {"1D"}
    series = charts.by_session["cs_2iRcv6K6V6wl"]
    assert series.completed and series.update_mode == "streaming" and series.last_index == 299


def test_du_bar_updates_2019() -> None:
    """rolandolucio #45 and #353: one forming bar each, 15-minute BTCUSD and daily AAPL."""
    volume = 59.86397457000001765  # as captured (20 significant digits in 2019)
    assert _decode(40, _sessions()) == [
        _bar("BITSTAMP:BTCUSD", "15", "2019-05-21T19:15:00Z", 8019.56, 8020.05, 7985.36, 8004.77, volume, False)
    ]
    assert _decode(48, _sessions()) == [
        _bar("BATS:AAPL", "1D", "2019-05-21T13:30:00Z", 185.22, 188.0, 184.5, 187.35, 20932619.0, False)
    ]


def test_critical_error_drops_its_series_only() -> None:
    """HamedMolavi: critical_error on cs_casjcotuguzl drops that series; every other series stays."""
    charts = _sessions()
    assert _decode(62, charts) == []
    dropped = [s for s in charts.series if s.dropped]
    assert [s.session_id for s in dropped] == ["cs_casjcotuguzl"]
    assert "invalid parameters" in (dropped[0].dropped or "")
    assert charts.outbox == [encode_packet("chart_delete_session", ["cs_casjcotuguzl"])]


# -- the rules on built sequences -------------------------------------------------------------


def _live_charts(symbols: list[str] = ["BINANCE:SOLUSDT"], res: str = "1") -> tuple[ChartSessions, list[str]]:  # noqa: B006
    charts = ChartSessions(symbols, [res], history_bars=300)
    charts.setup_packets(now=1_800_000_000)
    return charts, list(charts.by_session)


def _packet(method: str, params: list[Any]) -> tuple[str, list[Any]]:
    (packet,) = decode_message(frame(orjson.dumps({"m": method, "p": params}).decode())).packets
    return packet.method or "", packet.params


def _feed(charts: ChartSessions, method: str, params: list[Any], now: float = 1_800_000_100) -> list[dict]:
    m, p = _packet(method, params)
    return [item for item in charts.handle(m, p, RECEIVED, now=now) if isinstance(item, dict)]


def test_setup_packets_one_session_per_series() -> None:
    charts = ChartSessions(["BINANCE:SOLUSDT", '={"symbol":"BINANCE:BTCUSDT"}'], ["1", "5"], history_bars=120)
    packets = charts.setup_packets(now=1_800_000_000)
    assert len(packets) == 12 and len(charts.by_session) == 4
    cs = charts.series[0].session_id
    assert packets[:3] == [
        encode_packet("chart_create_session", [cs, ""]),
        encode_packet("resolve_symbol", [cs, "sds_sym_1", '={"adjustment":"splits","symbol":"BINANCE:SOLUSDT"}']),
        encode_packet("create_series", [cs, "sds_1", "s1", "sds_sym_1", "1", 120, ""]),
    ]
    assert resolve_spec('={"symbol":"BINANCE:BTCUSDT"}') == '={"symbol":"BINANCE:BTCUSDT"}'
    assert charts.stats.history_requests == 4


def test_du_new_index_closes_previous_bar_and_volume_may_be_missing() -> None:
    charts, (cs,) = _live_charts()
    t0 = 1_800_000_000  # a whole minute: 2027-01-15T08:00:00Z
    assert _feed(charts, "du", [cs, {"sds_1": {"s": [{"i": 7, "v": [t0, 10, 11, 9, 10.5, 3]}]}}])[0]["closed"] is False
    out = _feed(charts, "du", [cs, {"sds_1": {"s": [{"i": 7, "v": [t0, 10, 12, 9, 11.5, 5]}]}}])
    assert [(b["close"], b["closed"]) for b in out] == [(11.5, False)]
    out = _feed(charts, "du", [cs, {"sds_1": {"s": [{"i": 8, "v": [t0 + 60, 11.5, 11.5, 11.0, 11.2]}]}}])
    assert [(b["start"], b["close"], b["volume"], b["closed"]) for b in out] == [
        ("2027-01-15T08:00:00Z", 11.5, 5, True),
        ("2027-01-15T08:01:00Z", 11.2, None, False),
    ]


def test_volume_sentinel_is_null_and_a_price_sentinel_is_skipped() -> None:
    charts, (cs,) = _live_charts()
    out = _feed(charts, "du", [cs, {"sds_1": {"s": [{"i": 1, "v": [1_800_000_000, 1, 2, 0.5, 1.5, 1e100]}]}}])
    assert out[0]["volume"] is None
    assert _feed(charts, "du", [cs, {"sds_1": {"s": [{"i": 1, "v": [1_800_000_000, 1e100, 2, 0.5, 1.5, 1]}]}}]) == []
    assert _feed(charts, "du", [cs, {"sds_1": {"s": [{"i": 1, "v": [1_800_000_000, 1, 0.4, 0.5, 1.5, 1]}]}}]) == []
    assert charts.stats.errors["invalid_bar"] == 2


def test_empty_series_map_and_foreign_session() -> None:
    charts, (cs,) = _live_charts()
    assert _feed(charts, "timescale_update", [cs, {}, {"index": 300}]) == []
    assert _feed(charts, "du", ["cs_notours00000", {"sds_1": {"s": [{"i": 1, "v": [1, 1, 1, 1, 1]}]}}]) == []
    assert charts.stats.errors["foreign_chart_packet"] == 1 and charts.stats.errors["bad_bar_packet"] == 0


def test_series_error_and_symbol_error_drop_one_series_each() -> None:
    charts, (cs_a, cs_b, cs_c) = _live_charts(["BINANCE:SOLUSDT", "BINANCE:BTCUSDT", "NOPE:X"])
    _feed(charts, "series_error", [cs_a, "sds_1", "s1", "resolution_not_entitled", "node"])
    _feed(charts, "symbol_error", [cs_c, "sds_sym_1", "invalid symbol"])
    assert [s.symbol for s in charts.active] == ["BINANCE:BTCUSDT"]
    assert _feed(charts, "du", [cs_a, {"sds_1": {"s": [{"i": 1, "v": [1_800_000_000, 1, 1, 1, 1]}]}}]) == []
    assert len(_feed(charts, "du", [cs_b, {"sds_1": {"s": [{"i": 1, "v": [1_800_000_000, 1, 1, 1, 1]}]}}])) == 1
    assert charts.outbox == [
        encode_packet("chart_delete_session", [cs_a]),
        encode_packet("chart_delete_session", [cs_c]),
    ]
    assert charts.history_done is False


def test_gap_fill_marks_bars_inside_the_gap_and_asks_for_enough_bars() -> None:
    charts = ChartSessions(["BINANCE:SOLUSDT"], ["1"], history_bars=300)
    start, end = 1_800_000_030.0, 1_800_000_170.0  # a 140 s outage
    charts.mark_gap(start)
    charts.close_gap(end)
    charts.setup_packets(now=1_800_000_200)
    (cs,) = charts.by_session
    # Bars at 07:58, 07:59, 08:00 (the gap starts at 08:00:30), 08:01, 08:02 (it ends at 08:02:50), 08:03.
    bars = [{"i": n, "v": [1_800_000_000 - 120 + 60 * n, 1, 2, 0.5, 1.5, 1]} for n in range(6)]
    out = _feed(charts, "timescale_update", [cs, {"sds_1": {"s": bars}}, {}], now=1_800_000_200)
    assert [b["origin"] for b in out] == ["history", "history", "gap_fill", "gap_fill", "gap_fill", "history"]
    assert [b["closed"] for b in out] == [True] * 5 + [False]
    _feed(charts, "series_completed", [cs, "sds_1", "streaming", "s1", {"rt_update_period": 5}])
    assert charts.history_done and charts.series[0].fill_from is None
    # A gap longer than history_bars: the request reaches back over it.
    charts.mark_gap(1_800_000_000 - 1000 * 60)
    packets = charts.setup_packets(now=1_800_000_000)
    assert json.loads(packets[2].split("~m~", 2)[2])["p"][5] == 1002
