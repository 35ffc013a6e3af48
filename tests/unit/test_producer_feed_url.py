"""Which websocket URL a producer run uses (explicit Param, then tradingview_default's host, then TradingView),
and where the connection's auth token may be sent."""

from __future__ import annotations

import pytest

from quoteflow.settings import TRADINGVIEW_URL, ConfigError, ConnectionInfo
from quoteflow.stream import client_config, feed_url
from quoteflow.tradingview.client import ClientConfig

LOCAL = "ws://127.0.0.1:28765/socket.io/websocket"


def test_default_param_without_connection_is_tradingview() -> None:
    assert feed_url(TRADINGVIEW_URL, None) == TRADINGVIEW_URL
    assert feed_url(TRADINGVIEW_URL, ConnectionInfo("tradingview_default", password="tok")) == TRADINGVIEW_URL


def test_connection_host_redirects_scheduled_runs() -> None:
    assert feed_url(TRADINGVIEW_URL, ConnectionInfo("tradingview_default", host=LOCAL)) == LOCAL


def test_explicit_param_wins_over_connection() -> None:
    other = "ws://127.0.0.1:1/socket.io/websocket"
    assert feed_url(other, ConnectionInfo("tradingview_default", host=LOCAL)) == other


def test_connection_host_must_be_a_websocket_url() -> None:
    with pytest.raises(ConfigError, match="ws:// or wss://"):
        feed_url(TRADINGVIEW_URL, ConnectionInfo("tradingview_default", host="127.0.0.1"))


# -------------------------------------------------------------- where the auth token may go

TOKEN_CONN = ConnectionInfo("tradingview_default", password="user-token")


@pytest.mark.parametrize(
    "url",
    [
        TRADINGVIEW_URL,
        "wss://prodata.tradingview.com/socket.io/websocket?from=chart&type=chart",
        "wss://widgetdata.tradingview.com/socket.io/websocket",
        "wss://mobile-data.tradingview.com/socket.io/websocket",
        "wss://DATA.TradingView.com:443/socket.io/websocket",
    ],
)
def test_token_goes_to_tradingview_hosts(url: str) -> None:
    config = client_config(url, ["BINANCE:SOLUSDT"], TOKEN_CONN)
    assert config.auth_token == "user-token" and config.url == url


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("wss://evil.example/socket.io/websocket", "wss://evil.example:443"),
        ("wss://data.tradingview.com.evil.example/socket.io/websocket", "wss://data.tradingview.com.evil.example:443"),
        ("wss://data.tradingview.com@evil.example/socket.io/websocket", "wss://evil.example:443"),
        ("wss://data.tradingview.com:x@evil.example/", "wss://evil.example:443"),
        ("wss://evil.example#@data.tradingview.com/", "wss://evil.example:443"),
        ("wss://evil.example\\@data.tradingview.com/", None),
        ("wss://tradingview.com/socket.io/websocket", "wss://tradingview.com:443"),
        ("wss://xdata.tradingview.com/socket.io/websocket", "wss://xdata.tradingview.com:443"),
        ("wss://data.tradingview.com./socket.io/websocket", "wss://data.tradingview.com.:443"),
        ("wss://data.tradingview.com:8443/socket.io/websocket", "wss://data.tradingview.com:8443"),
        ("ws://data.tradingview.com/socket.io/websocket", "ws://data.tradingview.com:80"),  # cleartext
        (LOCAL, "ws://127.0.0.1:28765"),
    ],
)
def test_token_is_refused_for_any_other_host_with_the_fix(url: str, host: str | None) -> None:
    with pytest.raises(ConfigError) as err:
        client_config(url, ["BINANCE:SOLUSDT"], TOKEN_CONN)
    message = str(err.value)
    if host is not None:
        assert f"to {host}:" in message
    assert "'tradingview_default'" in message and "remove the password" in message
    assert "host of connection 'tradingview_default'" in message
    assert "user-token" not in message  # the refusal never names the secret
    assert "x@" not in message  # nor any userinfo of the URL


def test_token_goes_to_the_connections_own_host_only() -> None:
    own = ConnectionInfo("tradingview_default", password="user-token", host=LOCAL)
    url = feed_url(TRADINGVIEW_URL, own)
    assert url == LOCAL
    assert client_config(url, ["BINANCE:SOLUSDT"], own).auth_token == "user-token"
    # The same host written with its default port is the same endpoint.
    assert client_config("ws://127.0.0.1:28765/other/path", ["A:B"], own).auth_token == "user-token"
    for other in ("ws://127.0.0.1:28766/socket.io/websocket", "ws://localhost:28765/socket.io/websocket",
                  "wss://127.0.0.1:28765/socket.io/websocket"):  # fmt: skip
        with pytest.raises(ConfigError, match="refusing to send the TradingView auth token"):
            client_config(feed_url(other, own), ["A:B"], own)


def test_anonymous_runs_may_go_to_any_websocket_url() -> None:
    anonymous = ConnectionInfo("tradingview_default", host=LOCAL)
    for url in ("wss://evil.example/socket.io/websocket", "ws://127.0.0.1:1/", LOCAL):
        assert client_config(url, ["A:B"], anonymous).auth_token is None
        assert client_config(url, ["A:B"], None).auth_token is None
    assert client_config("ws://127.0.0.1:1/", ["A:B"], ConnectionInfo("tradingview_default", password="")).url


def test_client_config_built_directly_checks_the_token_too() -> None:
    with pytest.raises(ConfigError, match=r"to ws://127\.0\.0\.1:1: .*token_own_url"):
        ClientConfig(url="ws://127.0.0.1:1/", symbols=["A:B"], auth_token="t")
    ok = ClientConfig(url="ws://127.0.0.1:1/", symbols=["A:B"], auth_token="t", token_own_url="ws://127.0.0.1:1")
    assert ok.auth_token == "t"
