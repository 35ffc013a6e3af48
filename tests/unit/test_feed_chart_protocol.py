"""The feed server speaks chart sessions as TradingView does, checked with raw websocket frames.

A bare websocket client with its own ``~m~N~m~`` parser (not the project's client or decoder) sends
``chart_create_session``, ``resolve_symbol`` and ``create_series`` and reads what comes back: the
real shapes of shared/docs/tradingview-protocol.md §4/§6 and frames.jsonl, exactly N bars, the same
bars on every connect and every server start, ``du`` for the forming bar and a new index when the
minute rolls, errors scoped to their series, and the recorded chart frames in replay mode.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from quoteflow.tradingview.feed_server import FeedConfig, FeedServer

SAMPLES = Path("/work/shared/tradingview-samples/frames.jsonl")
SOL = "BINANCE:SOLUSDT"
BTC = "BINANCE:BTCUSDT"
ETH = "BINANCE:ETHUSDT"
_PREFIX = re.compile(r"~m~(\d+)~m~")


def free_port() -> int:
    """A free port in this suite's range (43000-43999)."""
    for port in range(43_000 + int(time.monotonic() * 1000) % 900, 44_000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in 43000-43999")


def parse(message: str) -> list[Any]:
    """Packets of one websocket message by their declared length (UTF-16 units): JSON objects or ``~h~N``."""
    out: list[Any] = []
    pos = 0
    while pos < len(message):
        m = _PREFIX.match(message, pos)
        assert m, f"bad frame at {pos}: {message[pos : pos + 40]!r}"
        n, start = int(m.group(1)), m.end()
        units, end = 0, start
        while units < n:
            units += 2 if ord(message[end]) > 0xFFFF else 1
            end += 1
        payload = message[start:end]
        out.append(payload if payload.startswith("~h~") else json.loads(payload))
        pos = end
    return out


def send(ws: websocket.WebSocket, method: str, params: list[Any]) -> None:
    payload = json.dumps({"m": method, "p": params}, separators=(",", ":"))
    ws.send(f"~m~{len(payload)}~m~{payload}")


class Raw:
    """A bare client: echoes heartbeats, keeps every method packet it read (dicts with ``m``, ``p``, ``t``...)."""

    def __init__(self, url: str) -> None:
        self.ws = websocket.create_connection(url, timeout=5)
        hello = parse(str(self.ws.recv()))
        assert "session_id" in hello[0]
        self.ws.settimeout(0.2)
        send(self.ws, "set_auth_token", ["unauthorized_user_token"])

    def send(self, method: str, params: list[Any]) -> None:
        send(self.ws, method, params)

    def recv(self) -> list[dict[str, Any]]:
        try:
            raw = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return []
        got = []
        for packet in parse(str(raw)):
            if isinstance(packet, str):
                self.ws.send(f"~m~{len(packet)}~m~{packet}")
            else:
                got.append(packet)
        return got

    def until(self, done: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            packets = self.recv()
            got += packets
            if any(done(p) for p in packets):
                return got
        raise AssertionError(f"no matching packet in {timeout} s; got {[p['m'] for p in got][-20:]}")

    def read_for(self, seconds: float) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            got += self.recv()
        return got

    def close(self) -> None:
        self.ws.close()


def is_(method: str, *params: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda p: p["m"] == method and p["p"][: len(params)] == list(params)


@contextlib.contextmanager
def feed(**settings: Any) -> Iterator[tuple[FeedServer, Callable[[], Raw]]]:
    config: dict[str, Any] = {"synthetic_symbols": 5, "rate": 50, "packets_per_message": 3, "seed": 3}
    server = FeedServer(FeedConfig(**{**config, "port": free_port(), **settings})).start()
    opened: list[Raw] = []

    def connect() -> Raw:
        client = Raw(server.url)
        opened.append(client)
        return client

    try:
        yield server, connect
    finally:
        for client in opened:
            with contextlib.suppress(Exception):
                client.close()
        server.stop()


def history(client: Raw, cs: str, symbol: str, resolution: str, count: int, rng: str = "") -> list[dict[str, Any]]:
    """Create a chart session + series; every packet up to ``series_completed`` (or an error)."""
    client.send("chart_create_session", [cs, ""])
    client.send("resolve_symbol", [cs, "sds_sym_1", "=" + json.dumps({"adjustment": "splits", "symbol": symbol})])
    client.send("create_series", [cs, "sds_1", "s1", "sds_sym_1", resolution, count, rng])
    return client.until(lambda p: p["m"] in ("series_completed", "series_error", "critical_error"))


def bars_of(packets: list[dict[str, Any]], sid: str = "sds_1") -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p in packets:
        if p["m"] == "timescale_update" and sid in p["p"][1]:
            rows += p["p"][1][sid]["s"]
    return rows


def test_history_has_exactly_n_bars_in_the_real_shapes_and_the_same_values_on_every_connect():
    with feed() as (server, connect):
        first: dict[int, list[dict[str, Any]]] = {}
        for n in (1, 300, 1000):
            client = connect()
            packets = history(client, f"cs_n{n}abcdefgh", SOL, "1", n)
            methods = [p["m"] for p in packets]
            assert methods == ["symbol_resolved", "series_loading", "timescale_update", "series_completed"], methods
            resolved, loading, update, completed = packets
            assert resolved["p"][:2] == [f"cs_n{n}abcdefgh", "sds_sym_1"]
            info = resolved["p"][2]
            assert info["full_name"] == SOL and info["pricescale"] == 100 and info["typespecs"] == ["crypto"]
            assert info["session"] == "24x7" and info["timezone"] == "Etc/UTC" and info["type"] == "spot"
            assert loading["p"] == [f"cs_n{n}abcdefgh", "sds_1", "s1"] and {"t", "t_ms"} <= set(loading)
            assert completed["p"] == [f"cs_n{n}abcdefgh", "sds_1", "streaming", "s1", {"rt_update_period": 1}]
            series = update["p"][1]["sds_1"]
            assert set(series) == {"node", "s", "ns", "t", "lbs"} and series["t"] == "s1"
            assert series["ns"] == {"d": "", "indexes": []}
            rows = series["s"]
            assert len(rows) == n
            assert [r["i"] for r in rows] == list(range(n))
            times = [r["v"][0] for r in rows]
            assert all(b - a == 60.0 for a, b in zip(times, times[1:], strict=False))
            now = server.clock()
            assert times[-1] == float(int(now) - int(now) % 60) or times[-1] == float(int(now) - int(now) % 60 - 60)
            assert series["lbs"] == {"bar_close_time": int(times[-1]) + 60}
            third = update["p"][2]
            assert set(third) == {"index", "zoffset", "changes", "marks", "index_diff"}
            assert third["changes"] == times and [m[2] for m in third["marks"]] == list(range(n))
            for row in rows:
                t, o, h, low, c, v = row["v"]
                assert low <= min(o, c) <= max(o, c) <= h and v >= 0
            assert 100 < rows[-1]["v"][4] < 180  # SOL near 140
            first[n] = rows
            client.close()
        again = connect()
        rows = bars_of(history(again, "cs_againabcdefg", SOL, "1", 1000))
    # Closed bars are identical on every connect; the overlap of N=300 and N=1000 is the same bars.
    by_time = {r["v"][0]: r["v"] for r in first[1000][:-2]}
    assert all(by_time[r["v"][0]] == r["v"] for r in rows[:-2] if r["v"][0] in by_time)
    assert sum(1 for r in rows if r["v"][0] in by_time) >= 990
    assert all(by_time[r["v"][0]] == r["v"] for r in first[300][:-2])
    # Not process state: a second server with the same seed sends the same closed bars.
    with feed() as (_, connect_other):
        other = bars_of(history(connect_other(), "cs_otherabcdefg", SOL, "1", 300))
    assert all(by_time[r["v"][0]] == r["v"] for r in other[:-2])


def test_levels_are_realistic_for_the_default_symbols():
    with feed() as (_, connect):
        client = connect()
        closes = {}
        for i, symbol in enumerate((SOL, BTC, ETH, "SYNTH:S0004")):
            closes[symbol] = bars_of(history(client, f"cs_level{i}abcdef", symbol, "1D", 30))[-1]["v"][4]
    assert 120 < closes[SOL] < 160
    assert 82_000 < closes[BTC] < 108_000
    assert 2_850 < closes[ETH] < 3_750
    assert 0.05 < closes["SYNTH:S0004"] < 2_000


def test_coarser_resolutions_are_the_aggregate_of_the_one_minute_bars():
    with feed() as (_, connect):
        client = connect()
        minutes = bars_of(history(client, "cs_minutesabcde", BTC, "1", 1000))
        by_time = {int(r["v"][0]): r["v"] for r in minutes}
        checked = 0
        for i, (resolution, seconds) in enumerate((("5", 300), ("15", 900), ("60", 3600), ("240", 14_400))):
            coarse = bars_of(history(client, f"cs_coarse{i}abcde", BTC, resolution, 20))
            assert len(coarse) == 20
            for row in coarse[:-1]:  # closed bars
                start = int(row["v"][0])
                parts = [by_time.get(t) for t in range(start, start + seconds, 60)]
                if None in parts:
                    continue
                assert row["v"][1] == parts[0][1] and row["v"][4] == parts[-1][4]
                assert row["v"][2] == max(p[2] for p in parts) and row["v"][3] == min(p[3] for p in parts)
                assert row["v"][5] == pytest.approx(sum(p[5] for p in parts))
                checked += 1
        for i, resolution in enumerate(("1D", "1W", "1M", "3", "45")):
            rows = bars_of(history(client, f"cs_calendar{i}abc", BTC, resolution, 5))
            assert len(rows) == 5, resolution
        weeks = bars_of(history(client, "cs_weeksabcdefg", BTC, "1W", 3))
    assert checked >= 15
    assert all(time.gmtime(r["v"][0]).tm_wday == 0 for r in weeks)  # weekly bars open on Mondays


def test_du_updates_the_forming_bar_and_rolls_to_a_new_index_with_the_final_values():
    # Feed time runs 15x: one minute every 4 s, so even a loaded machine sends several du per minute.
    with feed(clock_speed=15.0, du_interval=0.1) as (_, connect):
        client = connect()
        rows = bars_of(history(client, "cs_duabcdefghij", ETH, "1", 10))
        last = rows[-1]
        packets = client.until(lambda p: p["m"] == "du" and any(r["i"] == 10 for r in p["p"][1]["sds_1"]["s"]))
        dus = [p for p in packets if p["m"] == "du"]
        again = connect()
        fresh = bars_of(history(again, "cs_freshabcdefg", ETH, "1", 12))
    body = dus[0]["p"][1]["sds_1"]
    assert dus[0]["p"][0] == "cs_duabcdefghij"
    assert set(body) == {"s", "ns", "t", "lbs"} and body["t"] == "s1" and body["ns"] == {"d": "", "indexes": "nochange"}
    same = [r for p in dus for r in p["p"][1]["sds_1"]["s"] if r["i"] == 9]
    assert len(same) >= 2 and all(r["v"][0] == last["v"][0] for r in same)
    assert len({tuple(r["v"]) for r in same}) >= 2  # the forming bar moved
    roll = dus[-1]["p"][1]["sds_1"]["s"]
    assert [r["i"] for r in roll] == [9, 10]
    assert roll[1]["v"][0] == roll[0]["v"][0] + 60
    assert roll[1]["v"][1] == roll[0]["v"][4]  # the new bar opens at the old close
    final = {r["v"][0]: r["v"] for r in fresh}
    assert final[roll[0]["v"][0]] == roll[0]["v"]  # the du's final values are what history says afterwards


def _disagreements(ticks: list[tuple[float, int]], bars: dict[int, list[float]]) -> list[int]:
    """Closed minutes whose ticks stray outside [low, high] or whose last tick is not the close."""
    by_minute: dict[int, list[float]] = {}
    for price, at in ticks:
        by_minute.setdefault(at - at % 60, []).append(price)
    bad = []
    for minute, prices in by_minute.items():
        bar = bars.get(minute)
        if bar is None:
            continue
        _, _, high, low, close, _ = bar
        if any(not low <= p <= high for p in prices) or prices[-1] != close:
            bad.append(minute)
    return bad


def test_ticks_and_bars_agree_over_several_minutes():
    # 60x: four feed minutes in about four seconds, quotes and a chart on one connection.
    # About ten ticks per symbol per feed minute: a minute's last tick is rarely at :59 unless the server adds it.
    with feed(clock_speed=60.0, rate=20, packets_per_message=1) as (server, connect):
        client = connect()
        client.send("quote_create_session", ["qs_ticksabcdefg"])
        client.send("quote_set_fields", ["qs_ticksabcdefg", "lp", "lp_time", "volume"])
        client.send("quote_add_symbols", ["qs_ticksabcdefg", SOL, BTC])
        # Read until 3 s into the 5th minute after now: the minutes before that one got their closing ticks.
        stop = (int(server.clock()) // 60 + 5) * 60 + 3
        ticks: dict[str, list[tuple[float, int]]] = {SOL: [], BTC: []}
        while server.clock() < stop:
            for p in client.recv():
                if p["m"] == "qsd" and "lp" in p["p"][1]["v"]:
                    v = p["p"][1]["v"]
                    assert "lp_time" in v  # every price carries its trade time
                    ticks[p["p"][1]["n"]].append((v["lp"], v["lp_time"]))
        bars = {}
        for i, symbol in enumerate((SOL, BTC)):
            rows = bars_of(history(client, f"cs_check{i}abcdef", symbol, "1", 10))
            bars[symbol] = {int(r["v"][0]): r["v"] for r in rows if r["v"][0] < stop - 3}
    for symbol in (SOL, BTC):
        minutes = {at - at % 60 for _, at in ticks[symbol]} & set(bars[symbol])
        assert len(minutes) >= 3, (symbol, minutes)
        assert _disagreements(ticks[symbol], bars[symbol]) == []
        # The checker catches a planted fault: a close moved by one tick.
        tampered = dict(bars[symbol])
        minute = sorted(minutes)[1]
        tampered[minute] = [*tampered[minute][:4], tampered[minute][4] + 0.01, tampered[minute][5]]
        assert _disagreements(ticks[symbol], tampered) == [minute]


def test_series_errors_are_scoped_to_their_series():
    with feed(not_entitled=("60",), symbol_errors=(ETH,)) as (server, connect):
        client = connect()
        cs = "cs_errorsabcdef"
        client.send("chart_create_session", [cs, ""])
        client.send("resolve_symbol", [cs, "sym_bad", "BINANCE:NOSUCH"])
        client.send("resolve_symbol", [cs, "sym_eth", ETH])
        client.send("resolve_symbol", [cs, "sym_sol", SOL])
        got = client.until(is_("symbol_resolved", cs, "sym_sol"))
        assert [p for p in got if p["m"] == "symbol_error"] == [
            {"m": "symbol_error", "p": [cs, "sym_bad", "invalid symbol"], "t": got[0]["t"], "t_ms": got[0]["t_ms"]},
            {"m": "symbol_error", "p": [cs, "sym_eth", "invalid symbol"], "t": got[1]["t"], "t_ms": got[1]["t_ms"]},
        ]
        client.send("create_series", [cs, "s_bad", "s1", "sym_bad", "1", 10, ""])
        client.send("create_series", [cs, "s_hour", "s1", "sym_sol", "60", 10, ""])
        client.send("create_series", [cs, "s_secs", "s1", "sym_sol", "1S", 10, ""])
        client.send("create_series", [cs, "s_ok", "s1", "sym_sol", "1", 10, ""])
        got = client.until(is_("series_completed", cs, "s_ok"))
        errors = {p["p"][1]: p["p"][3] for p in got if p["m"] == "series_error"}
        assert errors == {
            "s_bad": "resolve error",
            "s_hour": "resolution_not_entitled",
            "s_secs": "resolution_not_entitled",
        }
        assert all(p["p"][:3] == [cs, p["p"][1], "s1"] for p in got if p["m"] == "series_error")
        assert len(bars_of(got, "s_ok")) == 10  # the good series of the same session goes on
        dus = client.until(lambda p: p["m"] == "du", timeout=5)
        assert {sid for p in dus if p["m"] == "du" for sid in p["p"][1]} == {"s_ok"}
        # A malformed call: critical_error naming the method and its args; the session stays open.
        client.send("create_series", [cs, "s_x", "s1", "sym_sol", "1", "many", ""])
        crit = client.until(lambda p: p["m"] == "critical_error")[-1]
        assert crit["p"][:2] == [cs, "invalid parameters"] and crit["p"][2].startswith("method: create_series. args:")
        # ETH's chart is refused by the fault, its quotes still stream.
        client.send("quote_create_session", ["qs_errorsabcdef"])
        client.send("quote_add_symbols", ["qs_errorsabcdef", ETH])
        client.until(lambda p: p["m"] == "qsd" and p["p"][1]["n"] == ETH and "lp" in p["p"][1]["v"])
        errors_sent = dict(server.stats.errors_sent)
    assert errors_sent["symbol_error"] == 2 and errors_sent["series_error"] == 3


def test_range_more_data_and_modify_series():
    with feed() as (server, connect):
        client = connect()
        base = bars_of(history(client, "cs_baseabcdefgh", SOL, "1", 200))
        # A range in the past (a gap fill): exactly the bars that overlap it, then series_timeframe, no du.
        t0, t1 = int(base[50]["v"][0]), int(base[80]["v"][0]) + 30
        packets = history(client, "cs_rangeabcdefg", SOL, "1", 300, f"r,{t0}:{t1}")
        rows = bars_of(packets)
        assert [r["v"] for r in rows] == [r["v"] for r in base[50:81]]
        assert any(p["m"] == "series_timeframe" and p["p"][6] is True for p in packets)
        later = client.read_for(1.5)
        assert not [p for p in later if p["m"] == "du" and p["p"][0] == "cs_rangeabcdefg"]
        # request_more_data: the n bars before the oldest, indexed -1, -2, ... matching a longer history.
        client.send("request_more_data", ["cs_baseabcdefgh", "sds_1", 100])
        more = client.until(is_("series_completed", "cs_baseabcdefgh", "sds_1"))
        older = bars_of(more)
        assert [r["i"] for r in older] == list(range(-100, 0))
        longer = bars_of(history(client, "cs_longerabcdef", SOL, "1", 300))
        assert [r["v"] for r in older] == [r["v"] for r in longer[:100]] or server.clock() % 60 < 2
        # modify_series (real 6-param shape): another resolution, the same bar count, indexes afresh.
        client.send("modify_series", ["cs_baseabcdefgh", "sds_1", "s2", "sds_sym_1", "5", ""])
        modified = client.until(is_("series_completed", "cs_baseabcdefgh", "sds_1", "streaming", "s2"))
        rows = bars_of(modified)
        assert len(rows) == 200 and rows[0]["i"] == 0
        assert all(int(r["v"][0]) % 300 == 0 for r in rows)
        assert [p["m"] for p in modified][-3:] == ["series_loading", "timescale_update", "series_completed"]


def test_replay_sends_the_recorded_chart_frames_under_the_clients_ids():
    with feed(synthetic_symbols=0, replay=SAMPLES, speed=0) as (_, connect):
        client = connect()
        cs = "cs_replayabcdef"
        client.send("chart_create_session", [cs, ""])
        client.send("resolve_symbol", [cs, "my_sym", "=" + json.dumps({"symbol": "NSE:JUNIPER"})])
        client.send("create_series", [cs, "my_series", "v7", "my_sym", "1D", 300, ""])
        got = client.until(lambda p: p["m"] == "timescale_update" and "my_series" in p["p"][1])
        got += client.read_for(1.0)
    chart = [p for p in got if p["m"] != "qsd" and p["m"] != "quote_completed"]
    text = json.dumps(chart)
    for recorded in ("cs_2iRcv6K6V6wl", "cs_1EScFq71Fjjf", "sds_sym_1", '"sds_1"', "cs_xkd21F2c6xIU"):
        assert recorded not in text
    resolved = next(p for p in chart if p["m"] == "symbol_resolved")
    assert resolved["p"][:2] == [cs, "my_sym"] and resolved["p"][2]["full_name"] == "NSE:JUNIPER"
    rows = bars_of(chart, "my_series")
    assert len(rows) >= 300
    # The first recorded bar (frames.jsonl #27), as TradingView sent it.
    assert rows[0] == {"i": 0, "v": [1728272700.0, 361.5, 363.7, 351.0, 354.1, 90305.0]}
    completed = [p for p in chart if p["m"] == "series_completed"]
    assert completed and all(p["p"][:2] == [cs, "my_series"] and p["p"][3] == "v7" for p in completed)
    assert all(p["p"][0] == cs for p in chart)
    assert any(p["m"] == "du" and list(p["p"][1]) == ["my_series"] for p in chart)
