"""The feed server speaks the quote protocol as TradingView does, over a real websocket.

Keys in the ``=``-JSON spec form answered under the key exactly as sent, fan-out of one update to
every key of an instrument, ``quote_set_fields`` honoured, ``quote_remove_symbols`` and
``quote_hibernate_all`` stopping updates, ``quote_fast_symbols`` accepted silently, and methods
the feed does not model ignored while the session goes on (shared/docs/tradingview-protocol.md §4-§6).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import websocket

from quoteflow.tradingview.feed_server import FeedConfig, FeedServer, instrument_of
from quoteflow.tradingview.protocol import HEARTBEAT, Packet, decode_message, encode_packet, frame

SOL = "BINANCE:SOLUSDT"
BTC = "BINANCE:BTCUSDT"
# The form TradingView-API subscribes with, and the web app's form with its keys in another order.
SOL_SESSION = '={"session":"regular","symbol":"BINANCE:SOLUSDT"}'
SOL_WEB_APP = '={"adjustment":"splits","currency-id":"USD","session":"regular","symbol":"BINANCE:SOLUSDT"}'
SOL_SPACED = '={ "symbol": "BINANCE:SOLUSDT", "session": "extended" }'


@contextlib.contextmanager
def _feed(**settings: Any) -> Iterator[tuple[FeedServer, Callable[[], _Raw]]]:
    """A running feed and a way to open logged-in raw clients; the clients close first, so stop() is quick."""
    config = {"synthetic_symbols": 3, "rate": 400, "packets_per_message": 3, "heartbeat_interval": 0.5, "seed": 7}
    server = FeedServer(FeedConfig(**{**config, **settings})).start()
    opened: list[_Raw] = []

    def connect() -> _Raw:
        client = _Raw(server.url)
        client.send("set_auth_token", ["unauthorized_user_token"])
        opened.append(client)
        return client

    try:
        yield server, connect
    finally:
        for client in opened:
            client.close()
        server.stop()


class _Raw:
    """A bare protocol client: sends packets, echoes heartbeats, collects every method packet it reads."""

    def __init__(self, url: str) -> None:
        self.ws = websocket.create_connection(url, timeout=3)
        hello = decode_message(self.ws.recv()).packets
        assert hello[0].kind == "hello"
        self.ws.settimeout(0.2)
        self.messages: list[list[Packet]] = []

    def send(self, method: str, params: list[Any]) -> None:
        self.ws.send(encode_packet(method, params))

    def read_until(self, done: Callable[[Packet], bool], timeout: float = 5.0) -> list[Packet]:
        """Method packets read up to and including the first one ``done`` accepts."""
        got: list[Packet] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            packets = self._recv()
            got += packets
            if any(done(p) for p in packets):
                return got
        raise AssertionError(f"no matching packet within {timeout} s; read {[p.method for p in got][-20:]}")

    def read_for(self, seconds: float) -> list[Packet]:
        """Every method packet read during ``seconds``."""
        got: list[Packet] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            got += self._recv()
        return got

    def settle(self) -> None:
        """Read past a message the writer may have built before the server applied the last change."""
        self.read_for(0.2)

    def _recv(self) -> list[Packet]:
        try:
            raw = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return []
        packets = []
        message = []
        for packet in decode_message(raw).packets:
            if packet.kind == HEARTBEAT:
                self.ws.send(frame(packet.raw))
            elif packet.method is not None:
                packets.append(packet)
                message.append(packet)
        if message:
            self.messages.append(message)
        return packets

    def close(self) -> None:
        self.ws.close()


def _qsd(packets: list[Packet], qs: str | None = None) -> list[dict[str, Any]]:
    return [p.params[1] for p in packets if p.method == "qsd" and (qs is None or p.params[0] == qs)]


def _is(method: str, *params: Any) -> Callable[[Packet], bool]:
    return lambda p: p.method == method and p.params[: len(params)] == list(params)


def _refused(key: str) -> Callable[[Packet], bool]:
    return lambda p: p.method == "qsd" and p.params[1].get("n") == key and p.params[1].get("s") == "error"


def test_spec_form_keys_are_answered_under_the_key_exactly_as_sent():
    keys = [SOL, SOL_SESSION, SOL_WEB_APP, SOL_SPACED]
    with _feed() as (server, connect):
        client = connect()
        client.send("quote_create_session", ["qs_spec"])
        client.send("quote_add_symbols", ["qs_spec", *keys])
        client.read_until(_is("quote_completed", "qs_spec", SOL_SPACED))
        packets = client.read_for(1.0)
        no_such = server.stats.errors_sent["no_such_symbol"]
    assert no_such == 0
    updates = _qsd(packets, "qs_spec")
    assert {u["n"] for u in updates} == set(keys)  # never a re-serialised or normalised spec
    assert all(u["s"] == "ok" for u in updates)
    # One instrument under four keys: each update arrives four times, once per key, in one message (tv.har #66).
    by_volume: dict[float, list[str]] = {}
    for update in updates:
        by_volume.setdefault(update["v"]["volume"], []).append(update["n"])
    assert len(by_volume) >= 10
    assert all(sorted(names) == sorted(keys) for names in by_volume.values())
    for message in client.messages:  # ... and the copies travel together, in the same websocket message
        in_message: dict[float, list[str]] = {}
        for packet in message:
            if packet.method == "qsd":
                in_message.setdefault(packet.params[1]["v"]["volume"], []).append(packet.params[1]["n"])
        assert all(sorted(names) == sorted(keys) for names in in_message.values())


def test_keys_that_name_no_known_instrument_get_no_such_symbol_and_the_session_goes_on():
    bad = [
        '={"session":"regular","symbol":"BINANCE:NOSUCH"}',  # well-formed spec, unknown instrument
        '={"session":"regular"}',  # no symbol key
        '={"symbol":"BINANCE:SOLUSDT"',  # not JSON
        '=["BINANCE:SOLUSDT"]',  # JSON, not an object
    ]
    with _feed() as (server, connect):
        client = connect()
        client.send("quote_create_session", ["qs_bad"])
        client.send("quote_add_symbols", ["qs_bad", *bad, SOL_SESSION])
        packets = client.read_until(_is("quote_completed", "qs_bad", SOL_SESSION))
        later = client.read_until(lambda p: p.method == "qsd" and p.params[1]["n"] == SOL_SESSION)
    errors = [u for u in _qsd(packets) if u["s"] == "error"]
    assert errors == [{"n": key, "s": "error", "errmsg": "no_such_symbol", "v": {}} for key in bad]
    assert [p.params[1] for p in packets if p.method == "quote_completed"] == [SOL_SESSION]
    assert _qsd(later)[-1]["s"] == "ok"


def test_instrument_of_reads_both_forms():
    assert instrument_of(SOL) == SOL
    assert instrument_of(SOL_WEB_APP) == SOL
    assert instrument_of(SOL_SPACED) == SOL
    assert instrument_of('={"symbol":"={\\"symbol\\":\\"BINANCE:SOLUSDT\\"}"}') is None  # no spec in a spec
    assert instrument_of('={"symbol":5}') is None


def test_set_fields_sends_only_those_fields_per_session():
    wanted = {"lp", "volume"}
    with _feed() as (server, connect):
        client = connect()
        client.send("quote_create_session", ["qs_few"])
        client.send("quote_set_fields", ["qs_few", *sorted(wanted)])
        client.send("quote_create_session", ["qs_all"])  # never sets fields: gets every field
        client.send("quote_add_symbols", ["qs_few", SOL, BTC])
        client.send("quote_add_symbols", ["qs_all", SOL])
        client.read_until(_is("quote_completed", "qs_all", SOL))
        packets = client.read_for(1.0)
        # A later add to the restricted session: its snapshot carries only the set, too.
        client.send("quote_add_symbols", ["qs_few", SOL_SESSION])
        snapshot = client.read_until(_is("quote_completed", "qs_few", SOL_SESSION))
        # Fields set after adding take effect from then on (the doc: before or after quote_add_symbols).
        client.send("quote_set_fields", ["qs_all", "bid", "ask"])
        client.send("quote_add_symbols", ["qs_all", "BINANCE:NOSUCH"])  # its reply marks the set as applied
        client.read_until(_refused("BINANCE:NOSUCH"))
        client.settle()
        after = client.read_for(1.0)
    few = _qsd(packets, "qs_few")
    assert len(few) >= 20 and all(set(u["v"]) <= wanted and u["v"] for u in few)
    assert {u["n"] for u in few} == {SOL, BTC}
    every = set().union(*(u["v"] for u in _qsd(packets, "qs_all")))
    assert {"lp", "volume", "ch", "bid", "ask"} <= every  # the unrestricted session still gets the rest
    (first,) = [u for u in _qsd(snapshot, "qs_few") if u["n"] == SOL_SESSION]
    assert set(first["v"]) == wanted
    bid_ask = _qsd(after, "qs_all")
    assert bid_ask and all(set(u["v"]) <= {"bid", "ask"} and u["v"] for u in bid_ask)  # empty updates are not sent


def test_remove_symbols_stops_that_key_only():
    with _feed() as (server, connect):
        client = connect()
        client.send("quote_create_session", ["qs_rm"])
        client.send("quote_add_symbols", ["qs_rm", SOL, SOL_SESSION, BTC])
        client.read_until(_is("quote_completed", "qs_rm", BTC))
        before = client.read_for(0.5)
        client.send("quote_remove_symbols", ["qs_rm", SOL_SESSION, "BINANCE:NEVERADDED"])
        # Packets are handled in order: once this later add is answered, the remove has been applied.
        client.send("quote_add_symbols", ["qs_rm", "BINANCE:NOSUCH"])
        client.read_until(_refused("BINANCE:NOSUCH"))
        client.settle()
        after = client.read_for(1.0)
        critical = server.stats.errors_sent["critical_error"]
    assert {u["n"] for u in _qsd(before)} == {SOL, SOL_SESSION, BTC}
    names = [u["n"] for u in _qsd(after)]
    assert SOL_SESSION not in names
    assert names.count(SOL) >= 5 and names.count(BTC) >= 5  # the plain key of the same instrument goes on
    assert critical == 0


def test_fast_symbols_is_accepted_silently_and_subscribes_nothing():
    with _feed() as (server, connect):
        client = connect()
        client.send("quote_create_session", ["qs_fast"])
        client.send("quote_add_symbols", ["qs_fast", SOL_SESSION])
        client.send("quote_fast_symbols", ["qs_fast", SOL_SESSION, BTC])
        client.read_until(_is("quote_completed", "qs_fast", SOL_SESSION))
        packets = client.read_for(1.0)
        errors = dict(server.stats.errors_sent)
        ignored = dict(server.stats.ignored_methods)
    assert errors == {}
    assert "quote_fast_symbols" not in ignored
    assert {p.method for p in packets} == {"qsd"}
    assert {u["n"] for u in _qsd(packets)} == {SOL_SESSION}  # BTC was only marked fast, never added


def test_methods_the_feed_does_not_model_are_ignored_and_the_session_goes_on():
    with _feed() as (server, connect):
        client = connect()
        client.send("quote_create_session", ["qs_go"])
        client.send("quote_add_symbols", ["qs_go", SOL])
        client.read_until(_is("quote_completed", "qs_go", SOL))
        client.send("set_locale", ["en", "US"])
        client.send("chart_create_session", ["cs_2iRcv6K6V6wl", ""])  # chart sessions are modelled: no reply
        client.send("switch_timezone", ["cs_2iRcv6K6V6wl", "Etc/UTC"])
        client.send("create_study", ["cs_2iRcv6K6V6wl", "st1", "st1", "sds_1", "Volume@tv-basicstudies-241", {}])
        client.send("no_such_method", [1, {"x": 2}])
        client.send("quote_add_symbols", ["qs_go", BTC])
        packets = client.read_until(_is("quote_completed", "qs_go", BTC))
        packets += client.read_for(0.5)
        ignored = dict(server.stats.ignored_methods)
        unknown = server.stats.client_malformed
        errors = dict(server.stats.errors_sent)
    assert ignored == {"set_locale": 1, "create_study": 1}
    assert unknown == 1  # a method name no TradingView client sends is skipped by the decoder (unknown_method)
    assert errors == {}
    assert {p.method for p in packets} <= {"qsd", "quote_completed"}
    assert {u["n"] for u in _qsd(packets)} == {SOL, BTC}


def test_hibernate_pauses_one_session_and_delete_ends_it():
    with _feed() as (server, connect):
        client = connect()
        for qs in ("qs_sleep", "qs_awake"):
            client.send("quote_create_session", [qs])
            client.send("quote_add_symbols", [qs, SOL])
        client.read_until(_is("quote_completed", "qs_awake", SOL))
        client.send("quote_hibernate_all", ["qs_sleep"])
        client.send("quote_add_symbols", ["qs_awake", "BINANCE:NOSUCH"])
        client.read_until(_refused("BINANCE:NOSUCH"))
        client.settle()
        paused = client.read_for(1.0)
        client.send("quote_delete_session", ["qs_awake"])
        client.send("quote_add_symbols", ["qs_awake", BTC])
        (gone,) = [p for p in client.read_until(_is("critical_error")) if p.method == "critical_error"]
        client.settle()
        quiet = client.read_for(0.5)
    assert _qsd(paused, "qs_sleep") == []
    assert len(_qsd(paused, "qs_awake")) >= 5
    assert gone.params == ["qs_awake", "invalid_parameters", "quote_add_symbols"]
    assert _qsd(quiet) == []  # nothing left subscribed and awake on this socket


def test_quote_methods_for_an_unknown_session_get_critical_error():
    with _feed() as (server, connect):
        client = connect()
        client.send("quote_create_session", ["qs_mine"])
        answers = []
        for method in ("quote_set_fields", "quote_remove_symbols", "quote_fast_symbols"):
            client.send(method, ["qs_other", SOL])
            answers += [p for p in client.read_until(_is("critical_error")) if p.method == "critical_error"]
        client.send("quote_set_fields", ["qs_mine", "lp", {"flags": ["force_permission"]}])
        answers += [p for p in client.read_until(_is("critical_error")) if p.method == "critical_error"]
    assert [p.params for p in answers] == [
        ["qs_other", "invalid_parameters", "quote_set_fields"],
        ["qs_other", "invalid_parameters", "quote_remove_symbols"],
        ["qs_other", "invalid_parameters", "quote_fast_symbols"],
        ["qs_mine", "invalid_parameters", "quote_set_fields"],
    ]
