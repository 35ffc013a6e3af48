"""A resilient TradingView quote client on websocket-client: connect, subscribe, watch, reconnect.

One thread does everything (receive, echo heartbeats, merge, hand Quotes on), so there is no
queue between the socket and Kafka and nothing to lose on a stop. The receive timeout is short so
a stop request or the watchdog is noticed within ``poll_interval`` even on a silent link.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import orjson
import websocket
from websocket._url import parse_url  # what websocket-client itself connects to

from quoteflow.gaps import make_gap
from quoteflow.quotes import format_timestamp
from quoteflow.settings import DEFAULT_HISTORY_BARS, ConfigError
from quoteflow.tradingview.chart import ChartSessions
from quoteflow.tradingview.protocol import (
    EXCERPT_CHARS,
    HELLO,
    MALFORMED_LOGGED,
    MESSAGE,
    MalformedPacket,
    ProtocolError,
    encode_packet,
    frame,
    log_malformed,
    parse_payload,
    split_packets,
)
from quoteflow.tradingview.session import AuthTokenRejected, QuoteSession, SessionError, SymbolState

logger = logging.getLogger(__name__)

# TradingView's firewall rejects handshakes that do not look like a browser (protocol notes §1).
DEFAULT_HEADERS: dict[str, str] = {
    "Origin": "https://www.tradingview.com",
    "User-Agent": (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0.0.0 Safari/537.36"
    ),
    "Accept-Language": "en-US,en;q=0.9",
    "Cache-Control": "no-cache",
    "Pragma": "no-cache",
}
# The only hosts TradingView's own auth token may travel to (protocol notes §1), over wss:// only.
TRADINGVIEW_HOSTS = frozenset(
    {"data.tradingview.com", "prodata.tradingview.com", "widgetdata.tradingview.com", "mobile-data.tradingview.com"}
)
REDACTED = "<redacted>"
_QSD_PREFIX = '{"m":"qsd","p":'
_loads = orjson.loads
SERVER_TO_CLIENT = "server->client"
CLIENT_TO_SERVER = "client->server"


class WatchdogTimeout(ProtocolError):
    """No inbound message for longer than the watchdog allows: the link is presumed dead."""


class MessageTooBig(ProtocolError):
    """A websocket message would exceed ``max_message_size``; refused before it is joined or decoded.

    ``size`` is what the message would have reached, ``held`` what was already joined of it (the
    earlier frames of a fragmented message; 0 for a single frame).
    """

    def __init__(self, size: int, held: int, limit: int) -> None:
        if held:
            text = (
                f"a fragmented websocket message would reach {size} bytes with its next frame "
                f"({held} bytes already received) and exceeds max_message_size={limit}"
            )
        else:
            text = f"a {size}-byte websocket frame exceeds max_message_size={limit}"
        super().__init__(text)
        self.size = size
        self.held = held


class MessageAssembler:
    """Joins the frames of websocket messages and refuses one as soon as it is known to exceed ``limit`` bytes.

    It works on websocket-client's public API only: a ``WebSocket(fire_cont_frame=True)`` hands every
    data frame out of ``recv_data_frame()`` as it arrives (a continuation frame with ``OPCODE_CONT``), so
    the client joins the fragments itself, in a ``bytearray`` (linear; websocket-client's own join is
    ``bytes +=``, quadratic), and stops at the first frame that would take the message past the limit.

    What the public API cannot do: refuse a frame from its header. ``recv_frame()`` and
    ``recv_data_frame()`` return a frame only once its whole payload is read, and the header's length
    is visible only inside ``frame_buffer`` (an internal). So a fragmented message is refused with at
    most ``limit`` bytes joined plus the one frame that crossed it, while a single-frame message is
    refused only after that frame is read: its memory is bounded by what the peer sends, not by
    ``limit``. TradingView's messages are single frames of a few KiB; the limit keeps a runaway
    message out of the decoder and Kafka, and reconnects.
    """

    __slots__ = ("limit", "_parts", "_opcode")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: bytearray | None = None
        self._opcode = 0

    def add(self, opcode: int, data: bytes, fin: bool) -> tuple[int, bytes | bytearray] | None:
        """One data frame in; ``(opcode, message)`` once the message is whole, else ``None``.

        Raises :class:`MessageTooBig` as soon as the message would exceed the limit.
        """
        parts = self._parts
        if parts is None:
            if fin:  # the usual case: a whole message in one frame, handed on as the bytes it came as
                if len(data) > self.limit:
                    raise MessageTooBig(len(data), 0, self.limit)
                return opcode, data
            if len(data) > self.limit:
                raise MessageTooBig(len(data), 0, self.limit)
            self._parts = bytearray(data)
            self._opcode = opcode
            return None
        held = len(parts)
        if held + len(data) > self.limit:
            self._parts = None
            raise MessageTooBig(held + len(data), held, self.limit)
        parts += data
        if not fin:
            return None
        self._parts = None
        return self._opcode, parts


def _endpoint(url: str) -> tuple[str, str, int, bool] | None:
    """``(scheme, hostname, port, has_userinfo)`` of a websocket URL, or ``None`` if it cannot be parsed.

    The hostname must be the same by urllib's reading and by websocket-client's own (``parse_url``, which
    the socket really connects to), so no parser difference can smuggle in another host.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
        connects_to = parse_url(url)[0]
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if not host or host != connects_to.lower() or scheme not in ("ws", "wss"):
        return None
    has_userinfo = parts.username is not None or parts.password is not None
    return scheme, host, port or (443 if scheme == "wss" else 80), has_userinfo


def token_destination_allowed(url: str, own_url: str | None = None) -> bool:
    """True if an auth token may be sent to ``url``: TradingView's own hosts over wss, or exactly ``own_url``.

    ``own_url`` is the host URL of the connection that holds the token (its owner named it). Matching is
    exact: ``wss://data.tradingview.com.evil.io``, ``wss://data.tradingview.com@evil.io`` or a non-443
    port do not pass.
    """
    target = _endpoint(url)
    if target is None:
        return False
    scheme, host, port, has_userinfo = target
    if scheme == "wss" and host in TRADINGVIEW_HOSTS and port == 443 and not has_userinfo:
        return True
    return own_url is not None and _endpoint(own_url) == target


@dataclass
class ClientConfig:
    """Everything the client needs; intervals are settable so tests run in seconds.

    An ``auth_token`` is only accepted for a ``url`` on TradingView's own hosts or equal to
    ``token_own_url`` (the host of the connection ``token_source`` that holds the token).
    """

    url: str
    symbols: list[str]
    auth_token: str | None = field(default=None, repr=False)  # a secret: never in logs or reprs
    token_own_url: str | None = None
    token_source: str | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_HEADERS))
    max_message_size: int = 2**24
    # Short, so a stop request that lands mid-handshake is still served within ~5 s.
    connect_timeout: float = 4.0
    watchdog_timeout: float = 30.0
    backoff_initial: float = 0.5
    backoff_cap: float = 30.0
    stable_after: float = 60.0
    auth_retry_delay: float = 300.0
    poll_interval: float = 0.5
    record_path: str | Path | None = None
    # Bars: chart sessions for bar_symbols (None = every symbol) at each resolution; none = bars off.
    bar_resolutions: tuple[str, ...] = ()
    bar_symbols: list[str] | None = None
    history_bars: int = DEFAULT_HISTORY_BARS
    bar_range: str = ""
    # False: no quote session, stop once every series' history is complete (``quoteflow bars``).
    quotes: bool = True
    shard: str = "0"

    def __post_init__(self) -> None:
        if not self.url.startswith(("ws://", "wss://")):
            raise ConfigError(f"TradingView url {self.url!r} must start with ws:// or wss://")
        if not self.symbols:
            raise ConfigError("no symbols to subscribe; give at least one EXCHANGE:TICKER")
        for name in ("connect_timeout", "watchdog_timeout", "backoff_cap", "poll_interval", "max_message_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"client setting {name} must be > 0, got {getattr(self, name)!r}")
        if self.backoff_initial < 0 or self.auth_retry_delay < 0 or self.stable_after < 0:
            raise ConfigError("backoff_initial, auth_retry_delay and stable_after must be >= 0")
        if self.auth_token and not token_destination_allowed(self.url, self.token_own_url):
            raise ConfigError(self._foreign_host_message())

    def _foreign_host_message(self) -> str:
        """Why the token is refused for this URL and the two ways out; names the host, never a secret."""
        target = _endpoint(self.url)
        host = "a URL whose host cannot be read" if target is None else f"{target[0]}://{target[1]}:{target[2]}"
        source = f"the password of connection {self.token_source!r}" if self.token_source else "auth_token"
        allowed = ", ".join(f"wss://{h}" for h in sorted(TRADINGVIEW_HOSTS))
        where = f"the host of connection {self.token_source!r}" if self.token_source else "token_own_url"
        return (
            f"refusing to send the TradingView auth token ({source}) to {host}: the token goes only to "
            f"TradingView's own websocket hosts ({allowed}) or to the URL that is the token's connection's own "
            f"host. To stream from {host} with the token, set that URL as {where} (and leave the url Param "
            f"at its default); to stream from it anonymously, remove the password"
        )


@dataclass
class ClientStats:
    """What the client saw; ``errors`` counts each kind (``critical_error``, ``watchdog``, ...)."""

    messages: int = 0
    packets: int = 0
    heartbeats: int = 0
    hellos: int = 0
    quotes: int = 0
    connects: int = 0
    reconnects: int = 0
    malformed_packets: int = 0
    # Bytes of the last refused (too big) message already buffered when it was refused: never above
    # max_message_size, however large the message would have grown.
    too_big_held_bytes: int = 0
    bars: int = 0
    gaps: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    backoff_delays: list[float] = field(default_factory=list)


def backoff_delay(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in ``[0, min(cap, initial * 2**attempt)]``."""
    return rng.uniform(0.0, min(cap, initial * (2 ** min(attempt, 30))))


class Recorder:
    """Appends every raw message, both ways, to a JSONL file shaped like ``frames.jsonl``."""

    def __init__(self, path: str | Path) -> None:
        self._file: IO[bytes] = open(path, "ab")  # closed by close()

    def write(self, direction: str, raw: str) -> None:
        """One line: ``{"ts": <epoch s>, "direction": ..., "raw": ...}``."""
        self._file.write(orjson.dumps({"ts": time.time(), "direction": direction, "raw": raw}) + b"\n")

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()


def _malformed(reason: str, payload: str, already: int) -> MalformedPacket:
    """A skipped payload; only the ones that will be logged keep an excerpt, so garbage costs little memory."""
    return MalformedPacket(reason, payload[:EXCERPT_CHARS] if already < MALFORMED_LOGGED else "")


class TradingViewClient:
    """Streams quotes (and bars) for a fixed symbol list until stopped or a deadline passes.

    ``on_quote(state, received_at)`` is called with each changed snapshot (a
    :class:`~quoteflow.tradingview.session.SymbolState`; ``state.to_quote(received_at)`` is
    the Quote record, ``state.to_json(received_at)`` its Kafka value). With bars on,
    ``on_bar(key, value)`` gets each Bar record's Kafka key and value, and ``on_gap(event)`` each
    feed gap (a disconnect or a stall, or a ``handover`` opened with :meth:`open_gap`) once data flows
    again; the history requested on that connection covers the gap, its bars marked ``gap_fill``.
    """

    def __init__(
        self,
        config: ClientConfig,
        on_quote: Callable[[SymbolState, str], None],
        *,
        on_tick: Callable[[], None] | None = None,
        on_bar: Callable[[bytes, bytes], None] | None = None,
        on_gap: Callable[[dict[str, Any]], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """Check the configuration; the socket is opened by :meth:`run`."""
        self.config = config
        try:
            self.session = QuoteSession(config.symbols, auth_token=config.auth_token)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.chart: ChartSessions | None = None
        if config.bar_resolutions:
            bar_symbols = config.symbols if config.bar_symbols is None else config.bar_symbols
            unknown = [s for s in bar_symbols if s not in self.session.states]
            if unknown:
                raise ConfigError(f"bar_symbols {unknown[:5]} are not among the producer's symbols; add them there")
            self.chart = ChartSessions(
                bar_symbols, config.bar_resolutions, history_bars=config.history_bars, bar_range=config.bar_range
            )
        elif not config.quotes:
            raise ConfigError("a history-only run needs at least one bar resolution")
        self.on_quote = on_quote
        self.on_bar = on_bar
        self.on_gap = on_gap
        # The open feed gap: (cause, start epoch s, detail); closed by the first data after it.
        self.gap: tuple[str, float, str] | None = None
        self.finished = False
        self.on_tick = on_tick
        self.stats = ClientStats(errors=self.session.stats.errors)
        self._rng = rng or random.Random()
        self._ws: websocket.WebSocket | None = None
        self._recorder: Recorder | None = None
        self.connected_at: float | None = None
        self.last_inbound: float | None = None
        self.last_heartbeat: float | None = None
        header = {k: v for k, v in config.headers.items() if k.lower() not in ("origin", "host")}
        self._header = [f"{k}: {v}" for k, v in header.items()]
        self._origin = next((v for k, v in config.headers.items() if k.lower() == "origin"), None)

    # -- gaps --------------------------------------------------------------------------------

    def open_gap(self, cause: str, start: float, detail: str) -> None:
        """Record that data stopped at ``start`` (epoch s); the next connection fills it and reports it."""
        if self.gap is not None:
            return  # still the same gap: it started when data first stopped
        self.gap = (cause, start, detail[:200])
        if self.chart is not None:
            self.chart.mark_gap(start)

    def _lost(self, cause: str, detail: str) -> None:
        """A connection that had data ended: open a gap from its last inbound message."""
        if self.last_inbound is None or self.connected_at is None:
            return
        self.open_gap(cause, time.time() - (time.monotonic() - self.last_inbound), detail)

    def _close_gap(self) -> None:
        """Data flows again: the gap ends now; report it (symbols: every quote and bar symbol)."""
        assert self.gap is not None
        cause, start, detail = self.gap
        self.gap = None
        end = max(start, time.time())
        symbols = list(self.session.subscribed) if self.config.quotes else []
        if self.chart is not None:
            self.chart.close_gap(end)
            symbols.extend(self.chart.symbols)
        event = make_gap(cause, start, end, list(dict.fromkeys(symbols)), shard=self.config.shard, detail=detail)
        self.stats.gaps += 1
        logger.warning(
            "feed gap (%s) from %s to %s (%.1f s, %s): %s",
            cause,
            event["start"],
            event["end"],
            end - start,
            detail,
            "bars re-requested" if self.chart is not None else "quotes resume with a fresh snapshot",
        )
        if self.on_gap is not None:
            self.on_gap(event)

    # -- lifecycle -------------------------------------------------------------------------

    def run(self, stop: threading.Event, deadline: float | None = None) -> ClientStats:
        """Connect and stream until ``stop`` is set or ``time.monotonic()`` passes ``deadline``."""
        if self.config.record_path:
            self._recorder = Recorder(self.config.record_path)
        attempt = 0
        try:
            while not self._should_stop(stop, deadline):
                self.connected_at = None
                try:
                    self._connect_and_stream(stop, deadline)
                    break  # clean return means stop, deadline, or a history-only run's end
                except AuthTokenRejected as exc:
                    self._lost("disconnect", str(exc))
                    delay = self.config.auth_retry_delay
                except (SessionError, WatchdogTimeout) as exc:
                    self._lost("stall" if isinstance(exc, WatchdogTimeout) else "disconnect", str(exc))
                    logger.warning("reconnecting after %s", exc)
                    delay = -1.0
                except MessageTooBig as exc:
                    self._lost("disconnect", str(exc))
                    self._abort_socket()
                    self.stats.errors["message_too_big"] += 1
                    self.stats.too_big_held_bytes = exc.held
                    logger.warning("reconnecting: %s", exc)
                    delay = -1.0
                except websocket.WebSocketBadStatusException as exc:
                    self.stats.errors[f"handshake_{exc.status_code}"] += 1
                    delay = -1.0
                    if exc.status_code in (403, 429):
                        # Rate limiting or the firewall: back off long straight away (protocol notes §8).
                        cap = self.config.backoff_cap
                        delay = self._rng.uniform(cap / 2, cap)
                    logger.warning(
                        "TradingView handshake refused with HTTP %s; retrying in %s",
                        exc.status_code,
                        f"{delay:.1f} s" if delay >= 0 else "the usual backoff",
                    )
                except (websocket.WebSocketException, OSError) as exc:
                    kind = "connection_lost" if self.connected_at is not None else "connect_failed"
                    self._lost("disconnect", f"{kind}: {type(exc).__name__}: {exc}")
                    self.stats.errors[kind] += 1
                    logger.warning("%s: %s: %s", kind, type(exc).__name__, exc)
                    delay = -1.0
                finally:
                    self._close_socket()
                if self._should_stop(stop, deadline):
                    break
                if self.connected_at is not None and time.monotonic() - self.connected_at >= self.config.stable_after:
                    attempt = 0
                if delay < 0:
                    delay = backoff_delay(attempt, self.config.backoff_initial, self.config.backoff_cap, self._rng)
                    attempt += 1
                self.stats.backoff_delays.append(delay)
                self.stats.reconnects += 1
                logger.info("reconnect %d in %.2f s", self.stats.reconnects, delay)
                self._sleep(delay, stop, deadline)
        finally:
            if self._recorder is not None:
                self._recorder.close()
                self._recorder = None
        return self.stats

    def _should_stop(self, stop: threading.Event, deadline: float | None) -> bool:
        return stop.is_set() or (deadline is not None and time.monotonic() >= deadline)

    def _sleep(self, delay: float, stop: threading.Event, deadline: float | None) -> None:
        """Wait ``delay`` seconds in short steps, waking at once on stop and serving ``on_tick``."""
        end = time.monotonic() + delay
        if deadline is not None:
            end = min(end, deadline)
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0 or stop.wait(min(remaining, self.config.poll_interval)):
                return
            if self.on_tick is not None:
                self.on_tick()

    def _close_socket(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close(timeout=0.5)
            except (websocket.WebSocketException, OSError) as exc:
                logger.debug("closing the websocket: %s", exc)

    def _abort_socket(self) -> None:
        """Close with 1009 (message too big) and drop the socket at once.

        Not :meth:`_close_socket`: websocket-client's ``close()`` reads frames until the peer's close
        reply, which would read the rest of the oversized message the limit just refused.
        """
        ws, self._ws = self._ws, None
        if ws is None:
            return
        try:
            ws.send_close(websocket.STATUS_MESSAGE_TOO_BIG, b"message too big")
        except (websocket.WebSocketException, OSError) as exc:
            logger.debug("sending close 1009: %s", exc)
        ws.shutdown()

    def _send(self, raw: str) -> None:
        assert self._ws is not None
        self._ws.send(raw)
        if self._recorder is not None:
            secret = self.config.auth_token
            if secret and secret in raw:
                # Recordings get shared and replayed; a user's token must never land in one.
                raw = encode_packet("set_auth_token", [REDACTED])
            self._recorder.write(CLIENT_TO_SERVER, raw)

    # -- one connection --------------------------------------------------------------------

    def _connect_and_stream(self, stop: threading.Event, deadline: float | None) -> None:
        config = self.config
        # fire_cont_frame: every data frame comes out of recv_data_frame() as it arrives, so the
        # MessageAssembler joins fragments and enforces max_message_size (websocket-client has no limit).
        ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=False, fire_cont_frame=True)
        assembler = MessageAssembler(config.max_message_size)
        self._ws = ws
        ws.settimeout(config.connect_timeout)
        ws.connect(
            config.url,
            header=self._header,
            origin=self._origin,
            suppress_origin=self._origin is None,
            # A redirect would carry the token to a host nobody vetted: with a token, follow none.
            redirect_limit=0 if config.auth_token else 3,
        )
        self.stats.connects += 1
        self.connected_at = now = time.monotonic()
        self.last_inbound = now
        logger.info(
            "connected to %s (connect %d), subscribing %d symbol(s)",
            config.url,
            self.stats.connects,
            len(self.session.subscribed),
        )
        setup = self.session.setup_packets()
        if not config.quotes:
            setup = setup[:1]  # set_auth_token only: a history-only run opens no quote session
        if self.chart is not None:
            setup.extend(self.chart.setup_packets())
        for raw in setup:
            self._send(raw)
        ws.settimeout(config.poll_interval)
        watchdog = config.watchdog_timeout
        tick_every = min(1.0, config.poll_interval)
        next_tick = now + tick_every
        recv_data_frame = ws.recv_data_frame
        add_frame = assembler.add
        opcode_text, opcode_close = websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_CLOSE
        while True:
            if stop.is_set():
                return
            try:
                opcode, received = recv_data_frame()
            except websocket.WebSocketTimeoutException:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return
                if now - self.last_inbound > watchdog:
                    self.stats.errors["watchdog"] += 1
                    raise WatchdogTimeout(f"no inbound message for {now - self.last_inbound:.1f} s") from None
                if self.on_tick is not None:
                    self.on_tick()
                next_tick = now + tick_every
                continue
            now = time.monotonic()
            if opcode == opcode_close:
                raise websocket.WebSocketConnectionClosedException("server closed the connection")
            self.last_inbound = now
            message = add_frame(opcode, received.data, received.fin)
            if message is not None and message[0] == opcode_text:
                self._on_message(message[1], now)
                if self.finished:
                    return
            if deadline is not None and now >= deadline:
                return
            if now >= next_tick:
                if self.on_tick is not None:
                    self.on_tick()
                next_tick = now + tick_every

    def _on_message(self, data: bytes | bytearray, now: float) -> None:
        """Handle one text message: echo heartbeats, route packets, hand changed Quotes on.

        ``data`` is within ``max_message_size``: :class:`MessageAssembler` refused anything bigger.
        """
        stats = self.stats
        stats.messages += 1
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            stats.malformed_packets += 1
            logger.warning("skipped a message that is not UTF-8: %r", bytes(data[:80]))
            return
        if self._recorder is not None:
            self._recorder.write(SERVER_TO_CLIENT, text)
        if self.gap is not None and '"m":' in text:
            self._close_gap()  # the first data after a gap (not a heartbeat, not the hello)
        payloads, malformed = split_packets(text)
        stats.packets += len(payloads)
        received_at: str | None = None
        session = self.session
        chart = self.chart
        handle_qsd = session.handle_qsd
        on_quote = self.on_quote
        for payload in payloads:
            if payload.startswith(_QSD_PREFIX):
                # Hot path: quote data skips the generic Packet classification.
                try:
                    decoded = _loads(payload)
                    params = decoded["p"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    malformed.append(_malformed("not_json", payload, len(malformed)))
                    continue
                if type(params) is not list:
                    malformed.append(_malformed("bad_params", payload, len(malformed)))
                    continue
                state = handle_qsd(params, now)
            elif payload.startswith("~h~") and payload[3:].isdigit():
                stats.heartbeats += 1
                self.last_heartbeat = now
                self._send(frame(payload))
                continue
            else:
                packet = parse_payload(payload)
                if type(packet) is MalformedPacket:
                    malformed.append(packet)
                    continue
                kind = packet.kind  # type: ignore[union-attr]
                if kind == HELLO:
                    stats.hellos += 1
                    continue
                if kind != MESSAGE:
                    continue
                params = packet.params  # type: ignore[union-attr]
                if chart is not None and params and type(params[0]) is str and params[0].startswith("cs_"):
                    if received_at is None:
                        received_at = format_timestamp(time.time(), milliseconds=True)
                    self._on_chart(chart, packet.method, params, received_at)  # type: ignore[union-attr, arg-type]
                    continue
                state = session.handle(packet, now)  # type: ignore[arg-type]
            # The one place a Quote leaves the client, whichever path decoded its packet; inline, not a
            # method, because it runs once per quote.
            if state is not None:
                if received_at is None:
                    received_at = format_timestamp(time.time(), milliseconds=True)
                stats.quotes += 1
                on_quote(state, received_at)
        if session.outbox:
            for raw in session.outbox:
                self._send(raw)
            session.outbox.clear()
        if chart is not None:
            if chart.outbox:
                for raw in chart.outbox:
                    self._send(raw)
                chart.outbox.clear()
            if not self.config.quotes and chart.history_done:
                self.finished = True
        if malformed:
            stats.malformed_packets += len(malformed)
            log_malformed(malformed, self.config.url)

    def _on_chart(self, chart: ChartSessions, method: str, params: list[Any], received_at: str) -> None:
        """A ``cs_`` packet: its bars to ``on_bar`` (the chart session scopes its errors to itself)."""
        items = chart.handle(method, params, received_at)
        if not items:
            return
        on_bar = self.on_bar
        dumps = orjson.dumps
        for n in range(0, len(items), 2):
            series = items[n]
            self.stats.bars += 1
            if on_bar is not None:
                on_bar(series.key_bytes, dumps(items[n + 1]))  # type: ignore[union-attr, arg-type]

    def last_tick_ages(self) -> dict[str, float | None]:
        """Seconds since each subscribed symbol last produced a Quote (``None`` if never)."""
        now = time.monotonic()
        return {
            key: (None if state.last_tick is None else round(now - state.last_tick, 1))
            for key, state in self.session.states.items()
            if key not in self.session.dropped
        }

    def delayed_symbols(self) -> dict[str, str]:
        """Symbols whose feed is not real-time (``update_mode`` other than ``streaming``), e.g. 15-min delayed."""
        return {
            key: mode
            for key, state in self.session.states.items()
            if (mode := state.values.get("update_mode")) not in (None, "streaming")
        }
