"""The websocket client against hostile or unusual loopback servers: floods, fragments, where the token goes.

Each server here is a few lines on the ``websockets`` package, speaking just enough of TradingView's
protocol (read the client's set-up packets, then play a scenario), so a fault can be exactly the one
under test. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from quoteflow.settings import TRADINGVIEW_URL, ConnectionInfo
from quoteflow.stream import client_config, feed_url
from quoteflow.tradingview.client import TradingViewClient
from quoteflow.tradingview.protocol import (
    MALFORMED_LOGGED,
    MAX_MALFORMED_PER_MESSAGE,
    decode_message,
    encode_packet,
    frame,
)
from quoteflow.tradingview.session import ANONYMOUS_TOKEN

SYMBOL = "BINANCE:SOLUSDT"
FAST = {"poll_interval": 0.1, "watchdog_timeout": 5.0, "backoff_initial": 0.1, "backoff_cap": 0.3}
Scenario = Callable[[ServerConnection, str, int], None]


class TinyFeed:
    """A loopback websocket server: records each connection's ``set_auth_token``, then runs ``scenario``."""

    def __init__(self, scenario: Scenario, **serve_kwargs: Any) -> None:
        self.scenario = scenario
        self.tokens: list[str] = []
        self.received: list[str] = []
        self.connections = 0
        self.server = serve(self._handle, "127.0.0.1", 0, compression=None, ping_interval=None, **serve_kwargs)
        self.port = self.server.socket.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/socket.io/websocket"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TinyFeed:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self._thread.join(timeout=10)

    def _handle(self, conn: ServerConnection) -> None:
        self.connections += 1
        number = self.connections
        qs = None
        try:
            while True:  # the client's set-up: set_auth_token ... quote_fast_symbols, one message each
                for packet in decode_message(str(conn.recv())).packets:
                    if packet.method == "set_auth_token":
                        self.tokens.append(packet.params[0])
                    elif packet.method == "quote_create_session":
                        qs = packet.params[0]
                    elif packet.method == "quote_fast_symbols":
                        assert qs is not None
                        self.scenario(conn, qs, number)
                        return
        except ConnectionClosed:
            return

    def drain(self, conn: ServerConnection) -> None:
        """Keep the connection open, recording what the client sends, until it closes."""
        try:
            while True:
                self.received.append(str(conn.recv()))
        except ConnectionClosed:
            return


def quote(qs: str, price: float) -> str:
    return encode_packet("qsd", [qs, {"n": SYMBOL, "s": "ok", "v": {"lp": price, "currency_code": "USDT"}}])


def run_client(
    url: str, until: Callable[[list[float]], bool], timeout: float = 30.0, **config: Any
) -> tuple[TradingViewClient, list[float]]:
    """Run a client on ``url`` in a thread until ``until(prices)`` holds (or ``timeout``); the client and prices."""
    conn = config.pop("connection", None)
    client_conf = client_config(url, [SYMBOL], conn, **{**FAST, **config})
    prices: list[float] = []
    client = TradingViewClient(client_conf, lambda state, _at: prices.append(state.values["price"]))
    stop = threading.Event()
    worker = threading.Thread(target=client.run, args=(stop,), daemon=True)
    worker.start()
    deadline = time.monotonic() + timeout
    try:
        while not until(prices) and time.monotonic() < deadline and worker.is_alive():
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(timeout=10)
    assert not worker.is_alive()
    return client, prices


@pytest.fixture
def quoteflow_warnings(caplog) -> Iterator[Callable[[], list[logging.LogRecord]]]:
    with caplog.at_level(logging.INFO, logger="quoteflow"):
        yield lambda: [r for r in caplog.records if r.name.startswith("quoteflow") and r.levelno >= 30]


# -------------------------------------------------------------- item 8: floods and fragments


def test_a_16_mib_flood_of_bad_packets_logs_a_bounded_number_of_lines(quoteflow_warnings):
    flood = "~m~9~m~" * ((2**24 - 64) // 7)  # under the default max_message_size of 2**24

    def scenario(conn: ServerConnection, qs: str, number: int) -> None:
        conn.send(flood)
        conn.send(quote(qs, 142.1))
        conn.send(frame("~h~1"))
        feed.drain(conn)

    with TinyFeed(scenario) as feed:
        client, prices = run_client(feed.url, until=lambda _: frame("~h~1") in feed.received)
    stats = client.stats
    # Sane: the flood costs one message, the link stays up, the next quote and heartbeat are served.
    assert prices == [142.1] and frame("~h~1") in feed.received
    assert (stats.connects, stats.reconnects, dict(stats.errors)) == (1, 0, {})
    assert stats.malformed_packets == MAX_MALFORMED_PER_MESSAGE + 1  # then it gave up on the message
    warnings = quoteflow_warnings()
    assert len(warnings) == MALFORMED_LOGGED + 1, [r.getMessage()[:120] for r in warnings[:10]]
    assert all("(length_mismatch): '~m~9~m~'" in r.getMessage() for r in warnings[:MALFORMED_LOGGED])
    summary = warnings[-1].getMessage()
    more = MAX_MALFORMED_PER_MESSAGE + 1 - MALFORMED_LOGGED
    assert f"skipped {more} more malformed packet(s) from {feed.url} in the same message" in summary
    assert f"length_mismatch={more - 1}, too_many_malformed=1" in summary
    assert f"{len(flood) - 7 * MAX_MALFORMED_PER_MESSAGE} characters skipped" in summary


def test_a_fragmented_message_over_the_limit_is_refused_before_it_is_joined(quoteflow_warnings):
    limit, piece, pieces = 1 << 20, 64 * 1024, 128  # an 8 MiB message in 64 KiB fragments, 1 MiB allowed
    offered: list[int] = []

    def scenario(conn: ServerConnection, qs: str, number: int) -> None:
        if number == 1:

            def fragments() -> Iterator[str]:
                for i in range(pieces):
                    offered.append(i)
                    yield "~" * piece

            try:
                conn.send(fragments())
            except ConnectionClosed:
                return
        conn.send(quote(qs, 7.5))
        feed.drain(conn)

    with TinyFeed(scenario) as feed:
        client, prices = run_client(feed.url, until=bool, max_message_size=limit)
    stats = client.stats
    assert stats.errors["message_too_big"] == 1
    # Refused at the 17th fragment, before joining it: what it held was the 16 accepted ones, never the 8 MiB.
    assert stats.too_big_held_bytes == limit
    assert stats.messages == 1  # only the next connection's quote: the fragments never became a message
    assert stats.reconnects == 1 and prices == [7.5]  # dropped, reconnected, streaming again
    assert len(offered) < pieces  # the server could not even hand over the whole message
    texts = [r.getMessage() for r in quoteflow_warnings()]
    assert any(
        f"a fragmented websocket message would reach {limit + piece} bytes with its next frame "
        f"({limit} bytes already received) and exceeds max_message_size={limit}" in t
        for t in texts
    ), texts


def test_a_fragmented_message_within_the_limit_is_joined_and_decoded():
    def scenario(conn: ServerConnection, qs: str, number: int) -> None:
        message = "".join(quote(qs, 1.0 + i) for i in range(200))
        conn.send([message[i : i + 1000] for i in range(0, len(message), 1000)])  # ~60 fragments
        feed.drain(conn)

    with TinyFeed(scenario) as feed:
        client, prices = run_client(feed.url, until=lambda prices: len(prices) == 200, max_message_size=64 * 1024)
    assert prices == [1.0 + i for i in range(200)]
    assert client.stats.messages == 1 and client.stats.malformed_packets == 0 and not client.stats.errors


# -------------------------------------------------------------- item 2: the token reaches only vetted hosts


def _streaming(conn: ServerConnection, qs: str, number: int, feed: TinyFeed) -> None:
    conn.send(quote(qs, 100.0 + number))
    feed.drain(conn)


def test_the_token_is_sent_to_the_connections_own_host():
    with TinyFeed(lambda conn, qs, n: _streaming(conn, qs, n, feed)) as feed:
        own = ConnectionInfo("tradingview_default", password="user-token-123", host=feed.url)
        url = feed_url(TRADINGVIEW_URL, own)  # a scheduled run: the url Param is left at its default
        assert url == feed.url
        _, prices = run_client(url, until=bool, connection=own)
    assert prices == [101.0]
    assert feed.tokens == ["user-token-123"]


def test_anonymous_runs_send_the_anonymous_token_anywhere():
    with TinyFeed(lambda conn, qs, n: _streaming(conn, qs, n, feed)) as feed:
        anonymous = ConnectionInfo("tradingview_default", host="wss://data.tradingview.com/socket.io/websocket")
        _, prices = run_client(feed.url, until=bool, connection=anonymous)
    assert prices == [101.0] and feed.tokens == [ANONYMOUS_TOKEN]


def test_with_a_token_a_redirect_to_another_host_is_not_followed():
    """The connection's own host answers 302 → another server: the token must not follow the redirect."""
    with TinyFeed(lambda conn, qs, n: _streaming(conn, qs, n, target)) as target:

        def redirect(connection: ServerConnection, _request: Any):
            response = connection.respond(HTTPStatus.FOUND, "moved\n")
            response.headers["Location"] = target.url
            return response

        with TinyFeed(lambda conn, qs, n: None, process_request=redirect) as redirector:
            own = ConnectionInfo("tradingview_default", password="user-token-123", host=redirector.url)
            client, _ = run_client(redirector.url, until=lambda _: False, timeout=1.5, connection=own)
            assert client.stats.errors["connect_failed"] >= 1 and client.stats.connects == 0
            assert target.connections == 0 and target.tokens == []
            # Anonymous, the same redirect is followed: the refusal above is the token's doing.
            anonymous = ConnectionInfo("tradingview_default", host=redirector.url)
            _, prices = run_client(redirector.url, until=bool, connection=anonymous)
    assert prices == [101.0] and target.tokens == [ANONYMOUS_TOKEN]
