"""Replay of real captured frames → the `produce` command → Kafka: exactly the expected merged snapshots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson

from quoteflow.quotes import validate_quote
from quoteflow.tradingview.protocol import encode_packet
from tests.helpers.producing import LOG_APPEND, feed, read_topic

ROOT = Path(__file__).resolve().parents[2]
FRAMES = ROOT / "tests" / "fixtures" / "tradingview" / "frames.jsonl"
# Crypto quote traffic of the 2019 capture: lp_time only, full snapshot, bid/ask, a second snapshot,
# a tick, the same tick again (inside a du message), an unsubscribed symbol, and a second symbol.
REPLAYED_LINES = [33, 34, 38, 39, 40, 47, 49]
SYMBOLS = ["BITSTAMP:BTCUSD", "COINBASE:LTCUSD", "BINANCE:NOVOL"]

BTC = {
    "symbol": "BITSTAMP:BTCUSD",
    "exchange": "BITSTAMP",
    "ticker": "BTCUSD",
    "currency": "USD",
    "update_mode": "streaming",
    "event_time": "2019-05-21T19:27:00Z",  # lp_time 1558466820 from the very first packet
    "schema": 1,
    "source": "tradingview",
}
EXPECTED = [
    {**BTC, "price": 8004.8, "change": -0.84, "change_percent": -0.01, "volume": 6219.89074752,
     "bid": None, "ask": None, "high": None, "low": None, "open": None, "prev_close": None},
    {**BTC, "price": 8004.8, "change": -0.84, "change_percent": -0.01, "volume": 6219.89074752,
     "bid": 7996.0, "ask": 8004.8, "high": None, "low": None, "open": None, "prev_close": None},
    {**BTC, "price": 8004.8, "change": -0.84, "change_percent": -0.01, "volume": 6219.89074752,
     "bid": 7996.0, "ask": 8004.8, "high": 8069.34, "low": 7676.27, "open": 8007.67, "prev_close": 8005.64},
    {**BTC, "price": 8004.77, "change": -0.87, "change_percent": -0.01, "volume": 6219.92213521,
     "bid": 7996.0, "ask": 8004.8, "high": 8069.34, "low": 7676.27, "open": 8007.67, "prev_close": 8005.64},
    # line 40 repeats line 39's tick: not emitted again; BITFINEX:ETHUSD (line 47) is not subscribed.
    {"symbol": "COINBASE:LTCUSD", "exchange": "COINBASE", "ticker": "LTCUSD", "price": 91.81, "change": 0.12,
     "change_percent": 0.13, "volume": 136887.952546, "bid": None, "ask": None, "high": None, "low": None,
     "open": None, "prev_close": None, "currency": None, "update_mode": None, "event_time": None,
     "schema": 1, "source": "tradingview"},
    {"symbol": "BINANCE:NOVOL", "exchange": "BINANCE", "ticker": "NOVOL", "price": 1.5, "change": None,
     "change_percent": None, "volume": None, "bid": None, "ask": None, "high": None, "low": None,
     "open": None, "prev_close": None, "currency": None, "update_mode": "streaming",
     "event_time": "2025-11-28T03:20:00Z", "schema": 1, "source": "tradingview"},
    # volume 1e+100 again changes nothing; a new lp_time does.
    {"symbol": "BINANCE:NOVOL", "exchange": "BINANCE", "ticker": "NOVOL", "price": 1.5, "change": None,
     "change_percent": None, "volume": None, "bid": None, "ask": None, "high": None, "low": None,
     "open": None, "prev_close": None, "currency": None, "update_mode": "streaming",
     "event_time": "2025-11-28T03:21:00Z", "schema": 1, "source": "tradingview"},
]  # fmt: skip


def _replay_file(tmp_path: Path) -> Path:
    lines = FRAMES.read_text(encoding="utf-8").splitlines()
    out = [lines[i] for i in REPLAYED_LINES]
    first = {"lp": 1.5, "volume": 1e100, "high_price": 1e100, "lp_time": 1764300000, "update_mode": "streaming"}
    built = encode_packet("qsd", ["qs_recorded", {"n": "BINANCE:NOVOL", "s": "ok", "v": first}])
    assert "1e+100" in built  # the sentinel exactly as TradingView writes it
    same = encode_packet("qsd", ["qs_recorded", {"n": "BINANCE:NOVOL", "s": "ok", "v": {"volume": 1e100}}])
    later = encode_packet("qsd", ["qs_other", {"n": "BINANCE:NOVOL", "s": "ok", "v": {"lp_time": 1764300060}}])
    out.append(json.dumps({"direction": "server->client", "raw": built}))
    out.append(json.dumps({"direction": "server->client", "raw": same + later}))
    path = tmp_path / "replay.jsonl"
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def test_replay_through_produce_command_gives_the_merged_snapshots(tmp_path, make_topic, kafka_bootstrap):
    topic = make_topic(1, LOG_APPEND)
    record = tmp_path / "recorded.jsonl"
    with feed(replay=_replay_file(tmp_path), speed=0, heartbeat_interval=0.3) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "quoteflow", "produce", "--url", server.url,
             "--symbols", ",".join(SYMBOLS), "--topic", topic, "--bootstrap", kafka_bootstrap,
             "--max-seconds", "2.5", "--record", str(record)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "include"), str(ROOT)])},
        )  # fmt: skip
        echoed = server.stats.heartbeats_echoed
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["quotes"] == len(EXPECTED)
    assert summary["reconnects"] == 0 and summary["errors"] == {} and summary["malformed_packets"] == 0
    assert summary["delayed_symbols"] == {}  # every replayed symbol is update_mode=streaming (or unknown)
    assert summary["heartbeats"] >= 3 and echoed >= 3
    for key in ("packets", "heartbeats", "reconnects", "malformed_packets", "errors"):
        assert key in summary

    records = read_topic(kafka_bootstrap, topic, expect=len(EXPECTED) + 1)
    got = []
    for message in records:
        value = validate_quote(orjson.loads(message.value()))
        assert message.key() == value["symbol"].encode()
        assert message.headers() == [("schema", b"quote.v1")]
        received_at = value.pop("received_at")
        assert received_at.endswith("Z") and received_at.startswith("20")
        got.append(value)
    assert got == EXPECTED

    # The recording uses frames.jsonl's shape, and every heartbeat was echoed as the same packet.
    lines = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
    assert all({"direction", "raw", "ts"} <= set(line) for line in lines)
    sent = [line["raw"] for line in lines if line["direction"] == "client->server"]
    heartbeats_in = [line["raw"] for line in lines if line["direction"] == "server->client" and "~h~" in line["raw"]]
    assert heartbeats_in and [raw for raw in sent if "~h~" in raw] == heartbeats_in
    assert sent[0] == '~m~54~m~{"m":"set_auth_token","p":["unauthorized_user_token"]}'
    assert not any("flags" in raw for raw in sent)
