"""The quote session: set-up packets, per-symbol snapshot merge, Quote mapping, error routing.

TradingView sends ``qsd`` packets whose ``v`` is a partial delta. Each subscribed key keeps a
snapshot of the tracked fields; a Quote is emitted once the key has a price and only when a
tracked field changed, so a reconnect's fresh (unchanged) snapshot is not emitted twice.
"""

from __future__ import annotations

import logging
import math
import secrets
import string
from collections import Counter
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import orjson

from quoteflow.quotes import (
    FIELDS,
    MAX_STRING_CHARS,
    SCHEMA_VERSION,
    SOURCE,
    Quote,
    format_timestamp,
    split_symbol,
)
from quoteflow.settings import ConfigError
from quoteflow.tradingview.protocol import Packet, ProtocolError, encode_packet

logger = logging.getLogger(__name__)
_dumps = orjson.dumps

ANONYMOUS_TOKEN = "unauthorized_user_token"
NO_VALUE = 1e100

# TradingView field → Quote field; these are exactly the fields quote_set_fields asks for.
FIELD_MAP: dict[str, str] = {
    "lp": "price",
    "ch": "change",
    "chp": "change_percent",
    "volume": "volume",
    "bid": "bid",
    "ask": "ask",
    "high_price": "high",
    "low_price": "low",
    "open_price": "open",
    "prev_close_price": "prev_close",
    "currency_code": "currency",
    "update_mode": "update_mode",
    "lp_time": "event_time",
}
QUOTE_FIELDS = tuple(FIELD_MAP)
_STRINGS = frozenset({"currency_code", "update_mode"})
# The Quote fields a snapshot holds, in the contract's order (quotes.FIELDS minus identity and received_at).
_SNAPSHOT_FIELDS = tuple(
    name for name in FIELDS if name not in ("schema", "source", "symbol", "exchange", "ticker", "received_at")
)


class FieldKind(IntEnum):
    """How :meth:`QuoteSession.merge` cleans a tracked TradingView field."""

    NUMBER = 0  # finite float, the 1e100 "no value" sentinel → None
    STRING = 1  # str cut to MAX_STRING_CHARS, anything else → None
    EPOCH_SECONDS = 2  # lp_time → RFC 3339 UTC event_time


# TradingView field → (Quote field, kind).
_TRACKED: dict[str, tuple[str, FieldKind]] = {
    tv: (
        name,
        FieldKind.EPOCH_SECONDS if tv == "lp_time" else FieldKind.STRING if tv in _STRINGS else FieldKind.NUMBER,
    )
    for tv, name in FIELD_MAP.items()
}
# Plain module globals: merge() binds them to locals without an attribute lookup on the enum class per call.
_NUMBER, _STRING = FieldKind.NUMBER, FieldKind.STRING


class SessionError(ProtocolError):
    """The server ended the session: reconnect (with backoff) and set everything up again."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class AuthTokenRejected(SessionError):
    """The server refused the auth token; retrying soon with the same token cannot help."""


class NoValidSymbols(ProtocolError, ConfigError):
    """TradingView refused every subscribed symbol: nothing left to stream, so fix the symbol list."""


def new_session_id(prefix: str = "qs_") -> str:
    """A fresh session id the way the web app makes them: ``qs_`` + 12 random alphanumerics."""
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(12))


@dataclass(slots=True)
class SymbolState:
    """The merged snapshot of one subscribed key and what was last emitted for it."""

    key: str
    exchange: str
    ticker: str
    key_bytes: bytes
    # Keyed by Quote field name, every field present (None = unknown), in contract order for to_json.
    values: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(_SNAPSHOT_FIELDS))
    identity: dict[str, Any] = field(default_factory=dict)
    lp_time: Any = None
    last_tick: float | None = None
    emitted: int = 0

    def to_quote(self, received_at: str) -> Quote:
        """The current snapshot as a Quote record."""
        return Quote(self.key, self.exchange, self.ticker, received_at=received_at, **self.values)

    def to_json(self, received_at: str) -> bytes:
        """The Kafka value of :meth:`to_quote`, byte for byte, without building the frozen record first.

        The hot path: the identity fields and the snapshot (kept in contract order) merged into one
        dict and one orjson call, several times cheaper than ``to_quote(...).to_json()``; tests pin
        the equality.
        """
        return _dumps({**self.identity, **self.values, "received_at": received_at})


@dataclass
class SessionStats:
    """Counters the summary and the stats line read."""

    qsd: int = 0
    foreign: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class QuoteSession:
    """One quote session over the lifetime of a client: survives reconnects, so snapshots persist."""

    def __init__(self, symbols: list[str] | tuple[str, ...], *, auth_token: str | None = None) -> None:
        """Validate the symbol list (``EXCHANGE:TICKER`` or ``=``-spec) early; nothing is sent yet."""
        if not symbols:
            raise ValueError("no symbols to subscribe; pass at least one EXCHANGE:TICKER")
        self.states: dict[str, SymbolState] = {}
        for key in symbols:
            if not isinstance(key, str):
                raise ValueError(f"symbol {key!r} is not a string")
            if key in self.states:
                continue
            if len(key) > MAX_STRING_CHARS:
                raise ValueError(
                    f"symbol {key[:60]!r}… is {len(key)} characters long; at most {MAX_STRING_CHARS} are allowed"
                )
            exchange, ticker = split_symbol(key)  # raises ValueError naming the bad symbol
            state = SymbolState(key, exchange, ticker, key.encode("utf-8"))
            state.identity = {
                "schema": SCHEMA_VERSION,
                "source": SOURCE,
                "symbol": key,
                "exchange": exchange,
                "ticker": ticker,
            }
            self.states[key] = state
        self.subscribed: list[str] = list(self.states)
        self.dropped: dict[str, str] = {}
        self._token = auth_token or ANONYMOUS_TOKEN
        self.session_id = new_session_id()
        self.stats = SessionStats()
        self.outbox: list[str] = []
        self._capped: set[tuple[str, str]] = set()

    @property
    def anonymous(self) -> bool:
        """True when the session logs in with the anonymous token."""
        return self._token == ANONYMOUS_TOKEN

    def setup_packets(self) -> list[str]:
        """The framed packets that (re)establish the session on a fresh connection, in order."""
        self.session_id = new_session_id()
        self.outbox.clear()
        qs = self.session_id
        packets = [
            encode_packet("set_auth_token", [self._token]),
            encode_packet("quote_create_session", [qs]),
            encode_packet("quote_set_fields", [qs, *QUOTE_FIELDS]),
        ]
        if self.subscribed:
            packets.append(encode_packet("quote_add_symbols", [qs, *self.subscribed]))
            packets.append(encode_packet("quote_fast_symbols", [qs, *self.subscribed]))
        return packets

    def handle(self, packet: Packet, now: float) -> SymbolState | None:
        """Route one method packet; the symbol's state when its snapshot changed (and has a price), else ``None``.

        Packets the client must send in response (``quote_remove_symbols`` after a symbol error) are
        queued on :attr:`outbox`.

        Raw packet: ``{"m":"qsd","p":["qs_x",{"n":"BINANCE:SOLUSDT","s":"ok","v":{"lp":142.1,"lp_time":1764300000}}]}``.
        Raises :class:`SessionError` for ``critical_error`` and ``protocol_error``.
        """
        method = packet.method
        params = packet.params
        if method == "qsd":
            return self.handle_qsd(params, now)
        if method == "critical_error":
            self.stats.errors["critical_error"] += 1
            detail = " ".join(str(p) for p in params)
            logger.error("TradingView critical_error: %s; reconnecting", detail)
            raise SessionError("critical_error", detail)
        if method == "protocol_error":
            self.stats.errors["protocol_error"] += 1
            detail = " ".join(str(p) for p in params)
            if "auth token" in detail:
                source = "anonymous token" if self.anonymous else "token from the tradingview connection's password"
                logger.error(
                    "TradingView rejected the auth token (%s): %s; fix or remove the token, retrying slowly",
                    source,
                    detail,
                )
                raise AuthTokenRejected("protocol_error", detail)
            logger.error("TradingView protocol_error: %s; reconnecting", detail)
            raise SessionError("protocol_error", detail)
        if method == "symbol_error" and len(params) >= 2 and params[1] in self.states:
            self._drop(params[1], "symbol_error", " ".join(str(p) for p in params[2:]))
        return None

    def handle_qsd(self, params: list[Any], now: float) -> SymbolState | None:
        """The ``p`` of a ``qsd`` packet: merge it into its symbol's snapshot (the client's hot path).

        Raw params: ``["qs_x",{"n":"BINANCE:SOLUSDT","s":"ok","v":{"lp":142.1}}]``; other sessions and
        unsubscribed keys are ignored, ``s:"error"`` drops the symbol.
        """
        if len(params) < 2 or params[0] != self.session_id or type(params[1]) is not dict:
            self.stats.foreign += 1
            return None
        self.stats.qsd += 1
        body = params[1]
        state = self.states.get(body.get("n"))  # type: ignore[arg-type]
        if state is None or state.key in self.dropped:
            self.stats.foreign += 1
            return None
        if body.get("s") != "ok":
            self._drop(state.key, "symbol_error", str(body.get("errmsg") or body.get("v") or body.get("s")))
            return None
        delta = body.get("v")
        if type(delta) is not dict or not self.merge(state, delta, now):
            return None
        return state

    def _drop(self, key: str, kind: str, detail: str) -> None:
        """Report a bad symbol once, stop tracking it, and unsubscribe it on this connection."""
        self.stats.errors[kind] += 1
        if key in self.dropped:
            return
        self.dropped[key] = detail
        self.subscribed = [s for s in self.subscribed if s != key]
        left = len(self.subscribed)
        logger.error("TradingView refused symbol %s (%s); dropped it, %d symbol(s) left", key, detail, left)
        self.outbox.append(encode_packet("quote_remove_symbols", [self.session_id, key]))
        if not self.subscribed:
            refused = ", ".join(f"{k} ({why})" for k, why in self.dropped.items())
            raise NoValidSymbols(f"TradingView refused every symbol: {refused}; fix the symbol list")

    def merge(self, state: SymbolState, delta: dict[str, Any], now: float) -> bool:
        """Merge a partial ``v`` into the snapshot; True if a tracked field changed and a price is known.

        Raw delta: ``{"ch":-0.87,"lp":8004.77,"volume":6219.92,"market_cap_calc":1.0}`` (untracked keys ignored).
        """
        values = state.values
        changed = False
        tracked = _TRACKED
        # Members bound to locals: `is` on a local is the cheapest test in this loop, as fast as the ints were.
        number, string = _NUMBER, _STRING
        for tv_field, raw in delta.items():
            entry = tracked.get(tv_field)
            if entry is None:
                continue
            name, kind = entry
            value: float | str | None
            if kind is number:
                # 1e100 is TradingView's "no value"; non-finite and wrong types become None too. Inline:
                # this loop runs for every field of every tick.
                raw_type = type(raw)
                value = float(raw) if (raw_type is float or raw_type is int) and -NO_VALUE < raw < NO_VALUE else None
            elif kind is string:
                value = raw if type(raw) is str else None
                if value is not None and len(value) > MAX_STRING_CHARS:
                    value = self._cap(state, name, value)
            else:  # FieldKind.EPOCH_SECONDS
                if raw == state.lp_time:
                    continue
                state.lp_time = raw
                value = _event_time(raw)
            if values[name] != value:
                values[name] = value
                changed = True
        if not changed or values["price"] is None:
            return False
        state.last_tick = now
        state.emitted += 1
        return True

    def _cap(self, state: SymbolState, name: str, value: str) -> str:
        """Cut an overlong feed string to :data:`MAX_STRING_CHARS`; count it, and say so once per symbol and field."""
        self.stats.errors["string_capped"] += 1
        if (state.key, name) not in self._capped:
            self._capped.add((state.key, name))
            logger.warning(
                "TradingView sent a %d-character %s for %s; keeping its first %d characters (reported once)",
                len(value),
                name,
                state.key,
                MAX_STRING_CHARS,
            )
        return value[:MAX_STRING_CHARS]


def _event_time(lp_time: Any) -> str | None:
    """``lp_time`` (epoch seconds) → RFC 3339 UTC; ``None`` for the sentinel or a non-number."""
    if type(lp_time) not in (int, float) or lp_time == NO_VALUE or not math.isfinite(lp_time) or lp_time < 0:
        return None
    try:
        return format_timestamp(lp_time)
    except (OverflowError, OSError, ValueError):
        return None
