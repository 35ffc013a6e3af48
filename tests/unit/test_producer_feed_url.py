"""Which websocket URL a producer run uses: explicit Param, then tradingview_default's host, then TradingView."""

from __future__ import annotations

import pytest

from include.quoteflow.producer import feed_url
from include.quoteflow.settings import TRADINGVIEW_URL, ConfigError, ConnectionInfo

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
