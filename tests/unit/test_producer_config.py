"""Producer configuration: safe Kafka settings, the tradingview connection, the CLI's stable flags."""

from __future__ import annotations

import argparse

import pytest

from quoteflow.cli import build_parser
from quoteflow.kafka.clients import producer_config
from quoteflow.kafka.quote_producer import QuoteProducer
from quoteflow.settings import ConfigError, ConnectionInfo
from quoteflow.stream import ProducerRun, client_config
from quoteflow.tradingview.client import DEFAULT_HEADERS, ClientConfig


def test_producer_config_is_idempotent_batched_and_keeps_overrides():
    config = producer_config({"bootstrap.servers": "h:1", "linger.ms": 5, "acks": "all"})
    assert config["enable.idempotence"] is True and config["acks"] == "all"
    assert config["linger.ms"] == 5  # tuning from the connection wins
    assert config["compression.type"] == "lz4"


@pytest.mark.parametrize("override", [{"acks": 1}, {"acks": "0"}, {"enable.idempotence": False}])
def test_producer_config_refuses_unsafe_settings(override):
    with pytest.raises(ConfigError, match="not allowed"):
        producer_config({"bootstrap.servers": "h:1", **override})


def test_producer_needs_servers_and_topic():
    with pytest.raises(ConfigError, match="bootstrap.servers"):
        producer_config({})
    with pytest.raises(ConfigError, match="topic"):
        QuoteProducer({"bootstrap.servers": "h:1"}, "")


def test_client_config_from_tradingview_connection():
    info = ConnectionInfo(
        conn_id="tradingview_default",
        password="user-token",
        extra={"headers": {"Origin": "https://data.tradingview.com", "X-Test": "1"}, "watchdog_timeout": 20},
    )
    config = client_config("wss://data.tradingview.com/socket.io/websocket", ["BINANCE:SOLUSDT"], info)
    assert config.auth_token == "user-token"
    assert config.headers["Origin"] == "https://data.tradingview.com"
    assert config.headers["X-Test"] == "1"
    assert config.headers["User-Agent"] == DEFAULT_HEADERS["User-Agent"]
    assert config.watchdog_timeout == 20
    anonymous = client_config("ws://127.0.0.1:1", ["BINANCE:SOLUSDT"], None, backoff_cap=2.0)
    assert anonymous.auth_token is None and anonymous.backoff_cap == 2.0
    assert dict(anonymous.headers) == DEFAULT_HEADERS
    assert "user-token" not in repr(config)  # the token never shows up if a config is logged


@pytest.mark.parametrize(
    ("extra", "match"),
    [({"watchdog": 3}, "unknown extra"), ({"headers": ["Origin"]}, "headers"), ({"poll_interval": "x"}, "number")],
)
def test_client_config_rejects_bad_connection_extra(extra, match):
    info = ConnectionInfo(conn_id="tradingview_default", extra=extra)
    with pytest.raises(ConfigError, match=match):
        client_config("ws://127.0.0.1:1", ["BINANCE:SOLUSDT"], info)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": "http://x"}, "ws://"),
        ({"symbols": []}, "at least one"),
        ({"watchdog_timeout": 0}, "watchdog_timeout"),
    ],
)
def test_client_config_validates_early(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ClientConfig(**{"url": "ws://127.0.0.1:1", "symbols": ["A:B"], **kwargs})


def test_producer_run_validates_early():
    client = ClientConfig(url="ws://127.0.0.1:1", symbols=["A:B"])
    with pytest.raises(ConfigError, match="max_seconds"):
        ProducerRun(client=client, kafka={}, topic="t", max_seconds=0)
    with pytest.raises(ConfigError, match="topic"):
        ProducerRun(client=client, kafka={}, topic="")


def _parser() -> argparse.ArgumentParser:
    return build_parser()


def test_cli_flags_are_the_documented_ones():
    args = _parser().parse_args(
        ["produce", "--url", "ws://h:1", "--symbols", "A:B,C:D", "--topic", "t", "--bootstrap", "h:9092",
         "--max-seconds", "5", "--record", "f.jsonl"]
    )  # fmt: skip
    assert (args.url, args.symbols, args.topic, args.bootstrap, args.max_seconds, args.record) == (
        "ws://h:1", "A:B,C:D", "t", "h:9092", 5.0, "f.jsonl",
    )  # fmt: skip
    assert callable(args.func)
    feed = _parser().parse_args(
        ["serve-feed", "--host", "127.0.0.1", "--port", "9000", "--replay", "x.jsonl", "--speed", "2", "--loop",
         "--drop-after", "5", "--stall-after", "7", "--garbage-every", "3", "--bad-length-every", "4"]
    )  # fmt: skip
    assert (feed.replay, feed.speed, feed.loop, feed.drop_after, feed.stall_after) == ("x.jsonl", 2.0, True, 5, 7)
    synthetic = _parser().parse_args(["serve-feed", "--synthetic", "--symbols", "50", "--rate", "1000"])
    assert (synthetic.synthetic, synthetic.symbols, synthetic.rate) == (True, 50, 1000.0)
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve-feed", "--synthetic", "--replay", "x.jsonl"])  # one feed only


def test_symbols_flag_keeps_the_commas_inside_json_specs() -> None:
    from quoteflow.cli.produce import split_symbol_list

    spec = '={"session":"regular","symbol":"BINANCE:SOLUSDT"}'
    tricky = '={"symbol":"A:B","note":"a,}b\\""}'
    assert split_symbol_list(f"{spec}, BINANCE:BTCUSDT,,{tricky}") == [spec, "BINANCE:BTCUSDT", tricky]
    assert split_symbol_list("BINANCE:SOLUSDT,BINANCE:ETHUSDT") == ["BINANCE:SOLUSDT", "BINANCE:ETHUSDT"]
