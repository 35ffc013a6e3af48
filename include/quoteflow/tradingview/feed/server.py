"""The protocol server of the local feed: TradingView's server side of the quote protocol, on ``websockets``.

It sends the hello, heartbeats (and drops clients that do not echo them), checks the client's
packets the way TradingView does, and streams the messages of a replay (:mod:`.replay`) or of the
synthetic walk (:mod:`.synthetic`), with the faults of :mod:`.faults` on the faulty connections.

The quote methods follow ``shared/docs/tradingview-protocol.md`` §4-§6 and the captured frames:
several quote sessions per socket, each with its own keys and field set; keys in the plain
``EXCHANGE:TICKER`` form or the ``=``-JSON spec form, every ``qsd`` naming the key exactly as the
client sent it; an update fanned out once per key when one instrument is subscribed under several
keys (tv.har #66, #84); ``quote_set_fields`` honoured (only those fields are sent);
``quote_remove_symbols``, ``quote_hibernate_all`` and ``quote_delete_session`` stop updates;
``quote_fast_symbols`` accepted silently; methods the feed does not model ignored without a reply.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from quoteflow.tradingview.feed.chart import ChartClient, ChartRecording, Charts
from quoteflow.tradingview.feed.config import FeedConfig
from quoteflow.tradingview.feed.faults import ControlFile, Faults, HandshakeLimiter, Outages
from quoteflow.tradingview.feed.keys import instrument_of
from quoteflow.tradingview.feed.replay import Recording, load_replay, replay_messages, replay_symbols
from quoteflow.tradingview.feed.synthetic import (
    Routes,
    SymbolWalk,
    Target,
    new_walks,
    snapshot_values,
    synthetic_messages,
)
from quoteflow.tradingview.feed.walk import Walk
from quoteflow.tradingview.protocol import (
    CHART_METHODS,
    HEARTBEAT,
    MESSAGE,
    decode_message,
    encode_packet,
    frame,
)

logger = logging.getLogger(__name__)

# Quote methods whose first parameter names one of the client's quote sessions.
_SESSION_METHODS = frozenset(
    {
        "quote_set_fields",
        "quote_add_symbols",
        "quote_fast_symbols",
        "quote_remove_symbols",
        "quote_hibernate_all",
        "quote_delete_session",
    }
)


@dataclass
class FeedStats:
    """What the server did, for tests and the demo's log."""

    handshakes: int = 0
    request_headers: list[dict[str, str]] = field(default_factory=list)
    handshake_times: list[float] = field(default_factory=list)
    rejected_handshakes: int = 0
    connections: int = 0
    connect_times: list[float] = field(default_factory=list)
    messages_sent: int = 0
    updates_sent: Counter[str] = field(default_factory=Counter)  # synthetic qsd packets per key as sent
    heartbeats_sent: int = 0
    heartbeats_echoed: int = 0
    dropped_for_heartbeat: int = 0
    client_methods: Counter[str] = field(default_factory=Counter)
    client_packets: list[tuple[int, str, list[Any]]] = field(default_factory=list)
    client_malformed: int = 0
    errors_sent: Counter[str] = field(default_factory=Counter)
    # Client methods the feed does not act on (set_locale, studies, unknown names ...): no reply, as TradingView.
    ignored_methods: Counter[str] = field(default_factory=Counter)
    outage_drops: int = 0  # connections cut when an outage began
    refused_outage: int = 0  # upgrades answered 503 during an outage
    refused_rate_limited: int = 0  # upgrades answered 429 by the handshake limit
    chart_series: int = 0  # create_series/modify_series answered with bars
    bars_sent: int = 0  # bars in timescale_update packets
    du_sent: int = 0  # du packets


@dataclass(slots=True)
class _QuoteSession:
    """One quote session of a client: its keys as sent, its field set, and whether it is paused."""

    qs: str
    keys: dict[str, str] = field(default_factory=dict)  # key as sent → instrument, in subscription order
    fast: set[str] = field(default_factory=set)
    fields: frozenset[str] | None = None  # None until quote_set_fields: every field is sent (tv.har)
    hibernating: bool = False


class _Client:
    """State of one connected client."""

    def __init__(self, number: int, conn: ServerConnection, faults: Faults) -> None:
        self.number = number
        self.conn = conn
        self.faults = faults
        self.sessions: dict[str, _QuoteSession] = {}
        self.qs: str | None = None  # the newest quote session: the replay addresses its packets to it
        # Rebuilt whole on every subscription change, so the writer reads one consistent tuple.
        self.routes: Routes = ()
        self.subscribed = threading.Event()
        self.charts = ChartClient()
        self.last_tick: dict[str, int] = {}  # symbol → second of the last quote tick sent (closing ticks follow)
        self.closed = threading.Event()
        self.pending_heartbeats: dict[str, float] = {}
        self.lock = threading.Lock()


class FeedServer:
    """Serve the feed on ``host:port`` from a background thread: ``start()`` → ``port`` → ``stop()``."""

    def __init__(self, config: FeedConfig) -> None:
        """Load the replay or build the synthetic universe; no socket is opened yet."""
        self.config = config
        self.stats = FeedStats()
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._replay: Recording = []
        self._walks: dict[str, SymbolWalk] = {}
        # Bars and ticks share one walk, a pure function of (seed, symbol, time): the same history on every connect.
        self.walk = Walk(config.seed or 0)
        self._clock_origin = time.time()
        self._clients: set[_Client] = set()
        self._started = time.monotonic()
        self.outages = Outages(config.outages, self._started)
        self._limiter = HandshakeLimiter(*config.handshake_limit) if config.handshake_limit else None
        self._control = ControlFile(config.control_file) if config.control_file else None
        self._outage_was_active = False
        if config.replay is not None:
            self._replay = load_replay(config.replay)
            self.known_symbols = replay_symbols(self._replay)
        else:
            self._walks = new_walks(config.synthetic_symbols, self.walk)
            self.known_symbols = set(self._walks)
        self._recording = ChartRecording([payloads for _, payloads in self._replay])
        self.charts = Charts(
            self.walk,
            self.known_symbols.__contains__,
            self.clock,
            frozenset(config.symbol_errors),
            frozenset(config.not_entitled),
            rt_update_period=max(1, round(config.du_interval)),
        )

    def clock(self) -> float:
        """Feed time (unix seconds): real time, or faster with ``clock_speed`` (bars, ``lp_time``, minute rolls)."""
        now = time.time()
        return self._clock_origin + (now - self._clock_origin) * self.config.clock_speed

    # -- feed-wide faults --------------------------------------------------------------------

    def start_outage(self, duration: float) -> None:
        """Begin an outage now: every connection is cut and upgrades get 503 for ``duration`` seconds."""
        self.outages.start(duration, time.monotonic())
        self._check_outage()

    def end_outage(self) -> None:
        """End every outage now; new connections are accepted again."""
        self.outages.end(time.monotonic())
        self._check_outage()

    def _check_outage(self) -> None:
        """Cut every open connection when an outage begins (once per outage)."""
        active = self.outages.active(time.monotonic())
        with self._lock:
            began = active and not self._outage_was_active
            self._outage_was_active = active
            victims = list(self._clients) if began else []
        if began:
            logger.info("feed: outage begins: cutting %d connection(s)", len(victims))
        for client in victims:
            self.stats.outage_drops += 1
            self._drop(client, "outage")

    def _monitor(self) -> None:
        """Scheduled outages and control-file commands, checked four times a second."""
        while not self._stopping.wait(0.25):
            self._check_outage()
            if self._control is None:
                continue
            for words in self._control.poll():
                self._command(words)

    def _command(self, words: list[str]) -> None:
        if words[0] == "outage" and len(words) == 2:
            try:
                duration = float(words[1])
            except ValueError:
                duration = -1.0
            if duration > 0:
                logger.info("feed: control file: outage for %s s", duration)
                self.start_outage(duration)
                return
        elif words == ["outage-end"]:
            logger.info("feed: control file: outage ends")
            self.end_outage()
            return
        logger.warning("feed: control file: unknown command %r (use: outage <seconds> | outage-end)", " ".join(words))

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        assert self._server is not None, "start() the server first"
        return int(self._server.socket.getsockname()[1])

    @property
    def url(self) -> str:
        """``ws://host:port/socket.io/websocket`` of the running server."""
        return f"ws://{self.config.host}:{self.port}/socket.io/websocket"

    def start(self) -> FeedServer:
        """Bind and serve in a daemon thread."""
        self._server = serve(
            self._handle,
            self.config.host,
            self.config.port,
            compression=None,
            max_size=2**24,
            ping_interval=None,
            server_header="tv",
            process_request=self._process_request,
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="feed-server", daemon=True)
        self._thread.start()
        threading.Thread(target=self._monitor, name="feed-faults", daemon=True).start()
        logger.info("feed server listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Close every connection and the listening socket."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FeedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one connection --------------------------------------------------------------------

    def _process_request(self, conn: ServerConnection, request: Any) -> Any:
        """Record the handshake; refuse it with ``handshake_status`` (e.g. 429, 403) on the faulty connections."""
        with self._lock:
            self.stats.request_headers.append({k.lower(): v for k, v in request.headers.raw_items()})
            self.stats.handshakes += 1
            number = self.stats.handshakes
            self.stats.handshake_times.append(time.monotonic())
        now = time.monotonic()
        if self.outages.active(now):
            self.stats.refused_outage += 1
            self.stats.rejected_handshakes += 1
            return conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable\n")
        status = self.config.handshake_status
        if status is not None and (self.config.fault_connections is None or number <= self.config.fault_connections):
            self.stats.rejected_handshakes += 1
            return conn.respond(HTTPStatus(status), f"{HTTPStatus(status).phrase}\n")
        if self._limiter is not None:
            wait = self._limiter.admit(now)
            if wait is not None:
                self.stats.refused_rate_limited += 1
                self.stats.rejected_handshakes += 1
                response = conn.respond(HTTPStatus.TOO_MANY_REQUESTS, "Too Many Requests\n")
                response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
                return response
        return None

    def _handle(self, conn: ServerConnection) -> None:
        with self._lock:
            self.stats.connections += 1
            number = self.stats.connections
            self.stats.connect_times.append(time.monotonic())
        faulty = self.config.fault_connections is None or number <= self.config.fault_connections
        client = _Client(number, conn, Faults(self.config, self._rng, faulty))
        reader = threading.Thread(target=self._read_loop, args=(client,), name=f"feed-read-{number}", daemon=True)
        with self._lock:
            self._clients.add(client)
        try:
            if self.outages.active(time.monotonic()):
                self._drop(client, "outage")
                return
            self._send(client, frame(self._hello()))
            reader.start()
            self._write_loop(client)
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self._clients.discard(client)
            client.closed.set()
            conn.close()
            if reader.is_alive():
                reader.join(timeout=2)

    def _hello(self) -> str:
        now = time.time()
        hello = {
            "session_id": f"0.{self._rng.randrange(99999)}.1_local-feed",
            "timestamp": int(now),
            "timestampMs": int(now * 1000),
            "release": "quoteflow-feed",
            "studies_metadata_hash": "0" * 40,
            "auth_scheme_vsn": 2,
            "protocol": "json",
            "via": f"{self.config.host}:{self.port}",
            "javastudies": ["3.66"],
        }
        return orjson.dumps(hello).decode()

    def _send(self, client: _Client, raw: str) -> None:
        client.conn.send(raw)

    def _drop(self, client: _Client, why: str) -> None:
        """Cut the TCP connection without a close handshake, as a flaky network or TradingView does."""
        logger.info("feed: dropping client %d (%s)", client.number, why)
        client.closed.set()
        try:
            client.conn.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read_loop(self, client: _Client) -> None:
        """Read the client's packets and answer as TradingView would."""
        stats = self.stats
        try:
            for raw in client.conn:
                if not isinstance(raw, str):
                    continue
                decoded = decode_message(raw)
                stats.client_malformed += len(decoded.malformed)
                for packet in decoded.packets:
                    if packet.kind == HEARTBEAT:
                        with client.lock:
                            if client.pending_heartbeats.pop(packet.raw, None) is not None:
                                stats.heartbeats_echoed += 1
                        continue
                    if packet.kind == MESSAGE and packet.method is not None:
                        self._on_client_packet(client, packet.method, packet.params)
        except ConnectionClosed:
            pass
        finally:
            client.closed.set()

    def _on_client_packet(self, client: _Client, method: str, params: list[Any]) -> None:
        stats = self.stats
        stats.client_methods[method] += 1
        if len(stats.client_packets) < 10_000:
            stats.client_packets.append((client.number, method, params))
        if method == "set_auth_token":
            if not params or params[0] not in self.config.tokens:
                stats.errors_sent["protocol_error"] += 1
                self._send(client, encode_packet("protocol_error", ["bad auth token"]))
                client.conn.close()
            return
        if method == "quote_create_session":
            if not params or not isinstance(params[0], str) or not params[0]:
                self._critical(client, params[0] if params else None, method)
                return
            # The doc is silent on a second create with an id already in use: it starts that session afresh.
            with client.lock:
                client.sessions[params[0]] = _QuoteSession(params[0])
                client.qs = params[0]
            self._publish_routes(client)
            return
        if method in _SESSION_METHODS:
            qs = params[0] if params else None
            session = client.sessions.get(qs) if isinstance(qs, str) else None
            args = params[1:]
            # The legacy {"flags":[...]} object (and any other non-string) is refused as TradingView now does
            # for quote_add_symbols (PerfectDreams 2024, 0xrushi #25); the doc shows no reply for the other
            # quote methods, so the same critical_error stands in for an unknown session or a bad parameter.
            if session is None or any(not isinstance(a, str) for a in args):
                self._critical(client, qs, method)
                return
            self._on_session_packet(client, session, method, args)
            return
        if method in CHART_METHODS:
            self._on_chart_packet(client, method, params)
            return
        stats.ignored_methods[method] += 1

    def _on_chart_packet(self, client: _Client, method: str, params: list[Any]) -> None:
        """Chart sessions: the walk's bars (synthetic), or the recording's chart packets (replay)."""
        if self.config.replay is not None and method in ("create_series", "modify_series", "resolve_symbol"):
            self._on_replay_chart(client, method, params)
            return
        charts = self.charts
        before = charts.stats.series_created
        packets = charts.handle(client.charts, method, params)
        self.stats.chart_series += charts.stats.series_created - before
        self.stats.bars_sent = charts.stats.bars_sent
        for name in ("symbol_error", "series_error", "critical_error"):
            count = sum(1 for p in packets if f'{{"m":"{name}"' in p[:40])
            if count:
                self.stats.errors_sent[name] += count
        if packets:
            self._send(client, "".join(packets))

    def _on_replay_chart(self, client: _Client, method: str, params: list[Any]) -> None:
        """Replay: ``resolve_symbol`` is remembered, a series gets the recorded chart packets under the client's ids."""
        cs = params[0] if params and isinstance(params[0], str) else None
        session = client.charts.sessions.get(cs) if cs else None
        width = 3 if method == "resolve_symbol" else 4
        if cs is None or session is None or len(params) < width or not all(isinstance(p, str) for p in params[1:width]):
            self.stats.errors_sent["critical_error"] += 1
            self._send(client, self.charts.handle(client.charts, method, [None, *params[1:]])[0])
            return
        if method == "resolve_symbol":
            session.aliases[params[1]] = params[2]
            if not self._recording:
                self.stats.errors_sent["symbol_error"] += 1
                self._send(client, encode_packet("symbol_error", [cs, params[1], "invalid symbol"]))
            return
        self.stats.chart_series += 1
        for message in self._recording.packets_for(cs, params[1], params[2], params[3]):
            self._send(client, message)

    def _critical(self, client: _Client, qs: Any, method: str) -> None:
        """``critical_error [qs, "invalid_parameters", method]``: the session stays open, as on TradingView."""
        self.stats.errors_sent["critical_error"] += 1
        self._send(client, encode_packet("critical_error", [qs, "invalid_parameters", method]))

    def _on_session_packet(self, client: _Client, session: _QuoteSession, method: str, args: list[str]) -> None:
        """One quote method for an existing session; only quote_add_symbols gets a reply (qsd, quote_completed)."""
        if method == "quote_add_symbols":
            self._add_symbols(client, session, args)
            return
        with client.lock:
            if method == "quote_set_fields":
                # Each call replaces the set (the web app sends one full list per session; the doc is silent on
                # merging). An empty list leaves nothing to send but quote_completed.
                session.fields = frozenset(args)
            elif method == "quote_fast_symbols":
                # Accepted silently: it marks keys for real-time updates and subscribes nothing. The doc is
                # silent on waking a hibernating session; the web app sends this when it shows symbols again.
                session.fast.update(args)
                session.hibernating = False
            elif method == "quote_remove_symbols":
                for key in args:  # keys never added are ignored: the doc shows no reply to a remove
                    session.keys.pop(key, None)
                    session.fast.discard(key)
            elif method == "quote_hibernate_all":
                session.hibernating = True
            elif method == "quote_delete_session":
                del client.sessions[session.qs]
                if client.qs == session.qs:
                    client.qs = next(reversed(client.sessions), None)
        self._publish_routes(client)

    def _add_symbols(self, client: _Client, session: _QuoteSession, keys: list[str]) -> None:
        """Answer each key as TradingView does: its current snapshot and ``quote_completed``, or ``s:"error"``."""
        packets = []
        added: dict[str, str] = {}
        qs = session.qs
        for key in keys:
            instrument = instrument_of(key)
            if instrument is None or instrument not in self.known_symbols:
                self.stats.errors_sent["no_such_symbol"] += 1
                packets.append(
                    encode_packet("qsd", [qs, {"n": key, "s": "error", "errmsg": "no_such_symbol", "v": {}}])
                )
                continue
            added[key] = instrument
            walk = self._walks.get(instrument)
            if walk is not None and walk.seq > 0:
                # Like TradingView after a (re)subscribe: the full current snapshot first.
                values = snapshot_values(walk, session.fields)
                if values:
                    packets.append(self._snapshot_packet(qs, key, values))
                    at = walk.sent.get("lp_time")
                    if isinstance(at, int) and "lp" in values:
                        # The snapshot is this client's latest tick of that minute: its close follows at the roll.
                        client.last_tick[instrument] = max(client.last_tick.get(instrument, 0), at)
            packets.append(encode_packet("quote_completed", [qs, key]))
        if packets:
            self._send(client, "".join(packets))
        with client.lock:
            for key, instrument in added.items():
                session.keys.setdefault(key, instrument)
            # The doc is silent on what wakes a hibernating session; adding symbols to it does here.
            session.hibernating = False
        self._publish_routes(client)
        client.subscribed.set()

    def _publish_routes(self, client: _Client) -> None:
        """Rebuild the writer's view: each subscribed instrument with every (session, key) it fans out to."""
        with client.lock:
            targets: dict[str, list[Target]] = {}
            for session in client.sessions.values():
                if session.hibernating:
                    continue
                for key, instrument in session.keys.items():
                    targets.setdefault(instrument, []).append((session.qs, key, session.fields))
            walks = self._walks
            client.routes = tuple((walks[i], tuple(t)) for i, t in targets.items() if i in walks)

    # -- streaming ---------------------------------------------------------------------------

    def _write_loop(self, client: _Client) -> None:
        """Heartbeats and data on one thread, so a stall really stops both."""
        config = self.config
        next_heartbeat = time.monotonic() + config.heartbeat_interval
        next_du = time.monotonic() + config.du_interval
        heartbeat_no = 0
        sent = 0
        source = self._messages(client)
        faults = client.faults
        next_send = time.monotonic()
        while not client.closed.is_set() and not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_heartbeat:
                with client.lock:
                    overdue = [t for t, at in client.pending_heartbeats.items() if now - at > config.heartbeat_timeout]
                if overdue:
                    self.stats.dropped_for_heartbeat += 1
                    self._drop(client, f"heartbeat {overdue[0]} not echoed within {config.heartbeat_timeout} s")
                    return
                heartbeat_no += 1
                token = f"~h~{heartbeat_no}"
                with client.lock:
                    client.pending_heartbeats[token] = now
                self._send(client, frame(token))
                self.stats.heartbeats_sent += 1
                next_heartbeat = now + config.heartbeat_interval
            if now >= next_du:
                next_du = now + config.du_interval
                if client.charts.sessions and not faults.stall_now(sent):
                    self._send_du(client)
            if not client.subscribed.is_set():
                client.subscribed.wait(min(0.05, max(0.0, next_heartbeat - now)))
                continue
            if now < next_send:
                time.sleep(min(next_send - now, max(0.0, next_heartbeat - now), 0.05))
                continue
            if faults.stall_now(sent):
                # Silence on every channel (heartbeats too) with the socket left open: a frozen link.
                logger.info("feed: stalling client %d after %d messages", client.number, sent)
                while not client.closed.wait(0.2) and not self._stopping.is_set():
                    pass
                return
            item = next(source, None)
            if item is None:
                # Replay finished: keep the link alive with heartbeats only.
                next_send = next_heartbeat
                continue
            delay, message = item
            if message is None:
                next_send = now + delay
                continue
            message = faults.inject(message, sent + 1)
            self._send(client, message)
            sent += 1
            self.stats.messages_sent += 1
            if faults.drop_now(sent):
                self._drop(client, f"drop_after={config.drop_after}")
                return
            next_send = (next_send if delay > 0 else now) + delay
            if next_send < now - 1.0:
                next_send = now  # do not burst to catch up after a slow spell

    def _send_du(self, client: _Client) -> None:
        """The ``du`` of every live series whose forming bar changed, 200 packets per websocket message."""
        packets = self.charts.updates(client.charts)
        for i in range(0, len(packets), 200):
            self._send(client, "".join(packets[i : i + 200]))
        self.stats.du_sent += len(packets)

    def _snapshot_packet(self, qs: str, key: str, values: dict[str, Any]) -> str:
        """The full merged state of everything sent so far, as TradingView sends after a subscribe."""
        return frame(orjson.dumps({"m": "qsd", "p": [qs, {"n": key, "s": "ok", "v": values}]}).decode())

    def _messages(self, client: _Client) -> Iterator[tuple[float, str | None]]:
        """This client's stream: the replay addressed to its newest session, or the synthetic walk of its routes."""
        config = self.config
        if config.replay is not None:
            return replay_messages(self._replay, config.speed, config.loop, lambda: client.qs)
        return synthetic_messages(
            lambda: client.routes,
            config.packets_per_message,
            config.rate,
            self._rng,
            self.stats.updates_sent,
            self.walk,
            self.clock,
            client.last_tick,
        )
