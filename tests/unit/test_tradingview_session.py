"""The quote session: set-up packets, snapshot merge, Quote mapping, per-symbol and session errors."""

from __future__ import annotations

import logging
import random

import orjson
import pytest

from quoteflow.quotes import MAX_STRING_CHARS, Quote, validate_quote
from quoteflow.tradingview.client import backoff_delay
from quoteflow.tradingview.protocol import decode_message, encode_packet
from quoteflow.tradingview.session import (
    ANONYMOUS_TOKEN,
    QUOTE_FIELDS,
    AuthTokenRejected,
    QuoteSession,
    SessionError,
)

RECEIVED = "2026-11-28T02:00:00.123Z"


def _qsd(session: QuoteSession, key: str, values: dict, status: str = "ok", qs: str | None = None):
    raw = encode_packet("qsd", [qs or session.session_id, {"n": key, "s": status, "v": values}])
    (packet,) = decode_message(raw).packets
    state = session.handle(packet, 1.0)
    return None if state is None else state.to_quote(RECEIVED)


def _packet(method: str, params: list):
    (packet,) = decode_message(encode_packet(method, params)).packets
    return packet


def _setup(session: QuoteSession) -> list[tuple[str, list]]:
    return [(p.method, p.params) for raw in session.setup_packets() for p in decode_message(raw).packets]


def test_setup_packets_anonymous_in_order_without_flags():
    session = QuoteSession(["BINANCE:SOLUSDT", "BINANCE:BTCUSDT"])
    sent = _setup(session)
    qs = session.session_id
    assert [m for m, _ in sent] == [
        "set_auth_token",
        "quote_create_session",
        "quote_set_fields",
        "quote_add_symbols",
        "quote_fast_symbols",
    ]
    assert sent[0][1] == [ANONYMOUS_TOKEN]
    assert sent[1][1] == [qs]
    assert sent[2][1] == [qs, *QUOTE_FIELDS]
    assert set(QUOTE_FIELDS) == {
        "lp", "lp_time", "ch", "chp", "volume", "bid", "ask", "high_price", "low_price",
        "open_price", "prev_close_price", "currency_code", "update_mode",
    }  # fmt: skip
    assert sent[3][1] == [qs, "BINANCE:SOLUSDT", "BINANCE:BTCUSDT"]
    assert all(isinstance(p, str) for p in sent[3][1])  # never the legacy flags object
    assert sent[4][1] == sent[3][1]
    assert qs.startswith("qs_") and len(qs) == 15


def test_user_token_is_sent_and_a_new_session_id_per_connection():
    session = QuoteSession(["BINANCE:SOLUSDT"], auth_token="user.jwt.token")
    first = _setup(session)
    qs1 = session.session_id
    second = _setup(session)
    assert first[0][1] == ["user.jwt.token"] == second[0][1]
    assert session.session_id != qs1


def test_bad_symbol_list_is_rejected_early():
    with pytest.raises(ValueError, match="NOEXCHANGE"):
        QuoteSession(["BINANCE:SOLUSDT", "NOEXCHANGE"])
    with pytest.raises(ValueError, match="at least one"):
        QuoteSession([])


def test_merge_emits_only_with_a_price_and_only_on_change():
    session = QuoteSession(["BITSTAMP:BTCUSD"])
    session.setup_packets()
    assert _qsd(session, "BITSTAMP:BTCUSD", {"lp_time": 1558466820}) is None  # no price yet
    quote = _qsd(session, "BITSTAMP:BTCUSD", {"lp": 8004.8, "volume": 1e100, "currency_code": "USD"})
    assert isinstance(quote, Quote)
    assert quote.price == 8004.8
    assert quote.volume is None  # 1e+100 means "no value"
    assert quote.event_time == "2019-05-21T19:27:00Z"  # from lp_time, not the local clock
    assert quote.received_at == RECEIVED
    assert (quote.exchange, quote.ticker, quote.currency) == ("BITSTAMP", "BTCUSD", "USD")
    assert quote.bid is None and quote.change is None
    assert _qsd(session, "BITSTAMP:BTCUSD", {"lp": 8004.8}) is None  # unchanged
    assert _qsd(session, "BITSTAMP:BTCUSD", {"market_cap_calc": 5.0, "description": "x"}) is None  # untracked
    quote = _qsd(session, "BITSTAMP:BTCUSD", {"bid": 7996.0, "ask": 8004.8})
    assert (quote.price, quote.bid, quote.ask, quote.volume) == (8004.8, 7996.0, 8004.8, None)
    quote = _qsd(session, "BITSTAMP:BTCUSD", {"lp_time": 1558466880})
    assert quote is not None and quote.event_time == "2019-05-21T19:28:00Z"
    validate_quote(orjson.loads(quote.to_json()))


def test_non_numeric_values_become_null_not_strings():
    session = QuoteSession(["BINANCE:SOLUSDT"])
    session.setup_packets()
    quote = _qsd(session, "BINANCE:SOLUSDT", {"lp": 142.5, "ch": "No disponible", "volume": True, "bid": 142})
    assert (quote.change, quote.volume, quote.bid) == (None, None, 142.0)
    assert _qsd(session, "BINANCE:SOLUSDT", {"lp": "No disponible"}) is None  # price lost: nothing to emit


def test_routing_by_exact_key_and_session():
    key = '={"session":"regular","symbol":"BINANCE:SOLUSDT"}'
    session = QuoteSession([key, "BINANCE:SOLUSDT"])
    session.setup_packets()
    assert _qsd(session, "BINANCE:SOLUSDT", {"lp": 1.0}, qs="qs_someoneelse") is None
    assert _qsd(session, "BINANCE:ETHUSDT", {"lp": 1.0}) is None
    assert session.stats.foreign == 2
    quote = _qsd(session, key, {"lp": 2.0})
    assert quote.symbol == key and (quote.exchange, quote.ticker) == ("BINANCE", "SOLUSDT")
    assert _qsd(session, "BINANCE:SOLUSDT", {"lp": 2.0}).symbol == "BINANCE:SOLUSDT"


def test_unchanged_snapshot_after_reconnect_is_not_re_emitted():
    session = QuoteSession(["BINANCE:SOLUSDT"])
    session.setup_packets()
    full = {"lp": 142.5, "ch": 1.0, "volume": 10.0, "lp_time": 1764300000, "update_mode": "streaming"}
    assert _qsd(session, "BINANCE:SOLUSDT", full) is not None
    session.setup_packets()  # reconnect: new session id, same snapshots
    assert _qsd(session, "BINANCE:SOLUSDT", full) is None
    assert _qsd(session, "BINANCE:SOLUSDT", {**full, "lp": 142.6}).price == 142.6


def test_symbol_error_drops_that_symbol_once_and_others_go_on(caplog):
    session = QuoteSession(["BINANCE:SOLUSDT", "BINANCE:NOPE"])
    session.setup_packets()
    with caplog.at_level(logging.ERROR):
        assert _qsd(session, "BINANCE:NOPE", {}, status="error") is None
        assert _qsd(session, "BINANCE:NOPE", {}, status="error") is None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "BINANCE:NOPE" in errors[0].getMessage()
    assert session.stats.errors["symbol_error"] == 1  # one report per symbol, later packets ignored
    assert session.subscribed == ["BINANCE:SOLUSDT"]
    assert [p.method for raw in session.outbox for p in decode_message(raw).packets] == ["quote_remove_symbols"]
    assert _qsd(session, "BINANCE:NOPE", {"lp": 1.0}) is None
    assert _qsd(session, "BINANCE:SOLUSDT", {"lp": 1.0}).price == 1.0
    sent = _setup(session)
    assert sent[3][1] == [session.session_id, "BINANCE:SOLUSDT"]  # not resubscribed after a reconnect
    chart = QuoteSession(["BINANCE:SOLUSDT", "BINANCE:BAD"])
    chart.handle(_packet("symbol_error", ["cs_x", "BINANCE:BAD", "invalid symbol"]), 1.0)
    assert chart.subscribed == ["BINANCE:SOLUSDT"]


def test_critical_and_protocol_errors_end_the_session():
    session = QuoteSession(["BINANCE:SOLUSDT"])
    session.setup_packets()
    with pytest.raises(SessionError) as err:
        session.handle(_packet("critical_error", [session.session_id, "invalid_parameters", "x"]), 1.0)
    assert err.value.kind == "critical_error"
    with pytest.raises(SessionError) as err:
        session.handle(_packet("protocol_error", ["banned"]), 1.0)
    assert not isinstance(err.value, AuthTokenRejected)
    assert dict(session.stats.errors) == {"critical_error": 1, "protocol_error": 1}


def test_bad_auth_token_is_reported_without_the_token(caplog):
    secret = "eyJhbGciOiJSUzUxMiJ9.secret-user-token"
    session = QuoteSession(["BINANCE:SOLUSDT"], auth_token=secret)
    session.setup_packets()
    with caplog.at_level(logging.DEBUG), pytest.raises(AuthTokenRejected):
        session.handle(_packet("protocol_error", ["bad auth token"]), 1.0)
    assert "rejected the auth token" in caplog.text
    assert secret not in caplog.text


def test_fast_kafka_value_is_byte_identical_to_the_record_encoder():
    session = QuoteSession(["BINANCE:SOLUSDT"])
    session.setup_packets()
    state = session.states["BINANCE:SOLUSDT"]
    for delta in ({"lp": 142.5, "chp": -0.5, "lp_time": 1764300000.0}, {"bid": 1e100, "currency_code": "USDT"}):
        assert session.merge(state, delta, 1.0)
        assert state.to_json(RECEIVED) == state.to_quote(RECEIVED).to_json()
    assert validate_quote(orjson.loads(state.to_json(RECEIVED)))["change_percent"] == -0.5


def test_backoff_is_full_jitter_and_capped():
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(30.0, 0.5 * 2**attempt)
        samples = [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) > 0.8 * ceiling  # really spread over the whole range
    assert backoff_delay(500, 0.5, 30.0, rng) <= 30.0


def test_delayed_feeds_are_flagged_per_symbol():
    from quoteflow.tradingview.client import ClientConfig, TradingViewClient

    client = TradingViewClient(
        ClientConfig(url="ws://127.0.0.1:1", symbols=["TVC:NDX", "BINANCE:SOLUSDT", "NYSE:X"]),
        lambda state, received_at: None,
    )
    session = client.session
    session.setup_packets()
    _qsd(session, "TVC:NDX", {"lp": 1.0, "update_mode": "delayed_streaming_900"})
    _qsd(session, "BINANCE:SOLUSDT", {"lp": 1.0, "update_mode": "streaming"})
    assert client.delayed_symbols() == {"TVC:NDX": "delayed_streaming_900"}
    assert client.last_tick_ages()["NYSE:X"] is None


def test_overlong_feed_strings_are_cut_to_the_documented_length_counted_and_reported_once(caplog):
    session = QuoteSession(["BINANCE:SOLUSDT", "BINANCE:BTCUSDT"])
    long_currency, long_mode = "U" * 100_000, "streaming" + "x" * 5000
    with caplog.at_level(logging.WARNING):
        first = _qsd(session, "BINANCE:SOLUSDT", {"lp": 1.0, "currency_code": long_currency, "update_mode": long_mode})
        again = _qsd(session, "BINANCE:SOLUSDT", {"lp": 2.0, "currency_code": long_currency + "V"})
        other = _qsd(session, "BINANCE:BTCUSDT", {"lp": 3.0, "currency_code": long_currency})
    assert first is not None and again is not None and other is not None
    assert first.currency == "U" * MAX_STRING_CHARS and first.update_mode == long_mode[:MAX_STRING_CHARS]
    assert again.currency == "U" * MAX_STRING_CHARS  # the same after cutting: still emitted for the new price
    assert session.stats.errors["string_capped"] == 4
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3  # once per symbol and field, not per tick
    assert "100000-character currency for BINANCE:SOLUSDT; keeping its first 256 characters" in warned[0]
    value = session.states["BINANCE:SOLUSDT"].to_json(RECEIVED)
    validate_quote(orjson.loads(value))
    assert len(value) < 4 * MAX_STRING_CHARS + 400  # a record stays small whatever the feed sends


def test_overlong_symbols_are_refused_with_the_limit():
    spec = '={"symbol":"BINANCE:SOLUSDT","session":"regular","note":"' + "n" * 300 + '"}'
    with pytest.raises(ValueError, match=f"is {len(spec)} characters long; at most {MAX_STRING_CHARS}"):
        QuoteSession(["BINANCE:SOLUSDT", spec])
    assert QuoteSession(["X:" + "T" * (MAX_STRING_CHARS - 2)]).subscribed  # exactly the limit is fine
