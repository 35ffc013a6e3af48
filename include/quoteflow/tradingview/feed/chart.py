"""Chart sessions of the local feed: ``resolve_symbol``, ``create_series`` and friends, answered as TradingView does.

Client → server (shared/docs/tradingview-protocol.md §4, frames.jsonl #2, #6, #7, #13, #17, #36)::

    {"m":"chart_create_session","p":["cs_2iRcv6K6V6wl",""]}
    {"m":"resolve_symbol","p":["cs_2iRcv6K6V6wl","sds_sym_1","={\\"symbol\\":\\"BINANCE:SOLUSDT\\"}"]}
    {"m":"create_series","p":["cs_2iRcv6K6V6wl","sds_1","s1","sds_sym_1","1",300,""]}
    {"m":"modify_series","p":["cs_1EScFq71Fjjf","sds_2","s1","sds_sym_2","60","r,1732838400:1766016000"]}
    {"m":"request_more_data","p":["cs_1EScFq71Fjjf","sds_2",232]}

Server → client (§6, frames.jsonl #27, #19, #40, #51): ``symbol_resolved``; ``series_loading``,
``timescale_update`` (history: ``{sid: {node, s:[{i, v:[t,o,h,l,c,vol]}], ns, t, lbs}}`` plus the
``{index, zoffset, changes, marks, index_diff}`` 3rd param), ``series_completed`` (2023+ shape),
each with ``t``/``t_ms``; then ``du`` for the forming bar (``ns.indexes:"nochange"``,
``lbs.bar_close_time`` = bar end, as a 2022 crypto capture shows). Errors are scoped: ``symbol_error``
to its alias, ``series_error`` to its series; a malformed call gets ``critical_error`` and the
session stays open.

Synthetic bars come from :class:`~quoteflow.tradingview.feed.walk.Walk`, so they agree with the
quote ticks. In replay mode :class:`ChartRecording` sends the recorded chart packets instead,
rewritten to the client's ids.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from quoteflow.tradingview.feed.keys import instrument_of
from quoteflow.tradingview.feed.walk import LISTED, Resolution, ResolutionError, Walk, parse_resolution
from quoteflow.tradingview.protocol import frame

logger = logging.getLogger(__name__)

MAX_BARS = 20_000  # what TradingView's best plan serves per request (about 1.9 MB, tv protocol notes §1)
NODE = "local-feed-charts-1"
# Range presets (tradingview-rs create_series): how far back each reaches.
_PRESETS = {"1D": 86_400, "5D": 5 * 86_400, "1M": 31 * 86_400, "3M": 92 * 86_400, "6M": 183 * 86_400,
            "12M": 366 * 86_400, "60M": 5 * 366 * 86_400, "LASTSESSION": 86_400}  # fmt: skip


def packet(method: str, params: list[Any], now: float | None = None) -> str:
    """One framed packet; with ``now`` it carries ``t`` and ``t_ms`` as TradingView's chart packets do."""
    body: dict[str, Any] = {"m": method, "p": params}
    if now is not None:
        body["t"] = int(now)
        body["t_ms"] = int(now * 1000)
    return frame(orjson.dumps(body).decode())


@dataclass(slots=True)
class Series:
    """One series of a chart session, as the client created it, and what was sent of it."""

    sid: str
    version: str
    alias: str
    instrument: str
    resolution: Resolution
    bar_count: int
    live: bool = False
    oldest_start: int = 0  # the oldest bar sent (request_more_data goes on before it)
    oldest_index: int = 0
    forming_start: int = 0
    forming_index: int = 0
    last_sent: list[float] | None = None


@dataclass(slots=True)
class ChartSession:
    """One chart session: its resolved aliases (None = refused) and its series."""

    cs: str
    aliases: dict[str, str | None] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # alias → key as sent
    series: dict[str, Series] = field(default_factory=dict)
    timezone: str = "Etc/UTC"


class ChartClient:
    """The chart sessions of one connection; the reader thread changes them, the writer reads them under ``lock``."""

    def __init__(self) -> None:
        self.sessions: dict[str, ChartSession] = {}
        self.lock = threading.Lock()

    def live_series(self) -> list[tuple[str, Series]]:
        """(chart session id, series) of every series that streams ``du``."""
        with self.lock:
            return [(cs.cs, s) for cs in self.sessions.values() for s in cs.series.values() if s.live]


@dataclass
class ChartStats:
    """What the chart side did (part of the server's stats)."""

    series_created: int = 0
    bars_sent: int = 0
    du_sent: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def _args_text(params: list[Any]) -> str:
    """The ``args`` of a ``critical_error`` detail as TradingView prints them: ``[sds_1, s1, sds_sym_1, s1, 1, ]``."""
    return "[" + ", ".join("" if p == "" else str(p) for p in params[1:]) + "]"


def parse_range(text: str, now: int) -> tuple[int, int] | None:
    """``r,<from>:<to>`` (unix seconds) or a preset such as ``12M`` → (from, to); None if it is neither."""
    if text.startswith("r,"):
        bounds = text[2:].split(":")
        if len(bounds) != 2 or not all(b.strip().isdigit() for b in bounds):
            return None
        start, end = int(bounds[0]), int(bounds[1])
        return (start, end) if start <= end else None
    if text in _PRESETS:
        return now - _PRESETS[text], now
    if text == "YTD":
        return int(datetime(datetime.fromtimestamp(now, UTC).year, 1, 1, tzinfo=UTC).timestamp()), now
    if text == "ALL":
        return LISTED, now
    return None


def _mark_weight(resolution: Resolution, start: int) -> int:
    """Tick-mark weight of a bar time: 70 year, 60 month, 50 week, 40 day (frames.jsonl #27), less inside a day."""
    d = datetime.fromtimestamp(start, UTC)
    if start % 86_400 == 0:
        if d.month == 1 and d.day == 1:
            return 70
        if d.day == 1:
            return 60
        return 50 if d.weekday() == 0 else 40
    if start % 3_600 == 0:
        return 30
    return 20 if start % 900 == 0 else 10


class Charts:
    """The synthetic chart side of the feed: answers chart packets and builds the live ``du`` updates."""

    def __init__(
        self,
        walk: Walk,
        known: Callable[[str], bool],
        clock: Callable[[], float],
        symbol_errors: frozenset[str] = frozenset(),
        not_entitled: frozenset[str] = frozenset(),
        rt_update_period: int = 1,
    ) -> None:
        self.walk = walk
        self.known = known
        self.clock = clock
        self.symbol_errors = symbol_errors
        self.not_entitled = not_entitled
        self.rt_update_period = rt_update_period
        self.stats = ChartStats()

    def _count(self, reason: str) -> None:
        self.stats.errors[reason] = self.stats.errors.get(reason, 0) + 1

    # -- client packets -----------------------------------------------------------------------

    def handle(self, client: ChartClient, method: str, params: list[Any]) -> list[str]:
        """The packets that answer one chart method (possibly none)."""
        now = self.clock()
        cs_id = params[0] if params and isinstance(params[0], str) else None
        if method == "chart_create_session":
            if not cs_id:
                return [self._critical(cs_id, method, params, now)]
            with client.lock:
                # The doc is silent on a second create with an id in use: it starts that session afresh.
                client.sessions[cs_id] = ChartSession(cs_id)
            return []
        with client.lock:
            session = client.sessions.get(cs_id) if cs_id else None
        if session is None:
            return [self._critical(cs_id, method, params, now)]
        if method == "chart_delete_session":
            with client.lock:
                client.sessions.pop(session.cs, None)
            return []
        if method == "switch_timezone":
            if len(params) < 2 or not isinstance(params[1], str) or not params[1]:
                return [packet("critical_error", [session.cs, "invalid timezone", "method: switch_timezone"], now)]
            session.timezone = params[1]
            return []
        if method == "resolve_symbol":
            return self._resolve(client, session, params, now)
        if method in ("create_series", "modify_series"):
            return self._series(client, session, method, params, now)
        if method == "remove_series":
            with client.lock:
                if len(params) > 1:
                    session.series.pop(params[1], None)
            return []
        if method == "request_more_data":
            return self._more(client, session, params, now)
        return []  # request_more_tickmarks: the feed has no tick marks beyond the bars' own

    def _critical(self, cs: Any, method: str, params: list[Any], now: float) -> str:
        self._count("critical_error")
        detail = f'method: {method}. args: "{_args_text(params)}"'
        return packet("critical_error", [cs, "invalid parameters", detail], now)

    def _resolve(self, client: ChartClient, session: ChartSession, params: list[Any], now: float) -> list[str]:
        if len(params) < 3 or not all(isinstance(p, str) and p for p in params[1:3]):
            return [self._critical(session.cs, "resolve_symbol", params, now)]
        alias, key = params[1], params[2]
        instrument = instrument_of(key)
        ok = instrument is not None and self.known(instrument) and instrument not in self.symbol_errors
        with client.lock:
            session.aliases[alias] = instrument if ok else None
            session.keys[alias] = key
        if not ok or instrument is None:
            self._count("symbol_error")
            return [packet("symbol_error", [session.cs, alias, "invalid symbol"], now)]
        return [packet("symbol_resolved", [session.cs, alias, self.symbol_info(instrument)], now)]

    def symbol_info(self, symbol: str) -> dict[str, Any]:
        """A crypto symbol-info object with the keys of a real ``symbol_resolved`` (frames.jsonl #27)."""
        exchange, _, ticker = symbol.partition(":")
        spec = self.walk.spec(symbol)
        quote = "USDT" if ticker.endswith("USDT") else "USD"
        base = ticker[: -len(quote)] if ticker.endswith(quote) and len(ticker) > len(quote) else ticker
        description = f"{base} / TetherUS" if quote == "USDT" else f"{base} / US Dollar"
        session = "24x7"
        return {
            "source2": {"country": "", "description": exchange.title(), "exchange-type": "exchange",
                        "id": exchange, "name": exchange.title()},
            "currency_code": quote,
            "source_id": exchange,
            "session_holidays": "",
            "subsession_id": "regular",
            "provider_id": exchange.lower(),
            "currency_id": f"XTVC{quote}",
            "base_currency_id": f"XTVC{base}",
            "country": "",
            "pro_perm": "",
            "measure": "price",
            "allowed_adjustment": "none",
            "short_description": description,
            "variable_tick_size": "",
            "language": "en",
            "name": ticker,
            "full_name": symbol,
            "pro_name": symbol,
            "base_name": [symbol],
            "description": description,
            "exchange": exchange,
            "pricescale": spec.pricescale,
            "pointvalue": 1.0,
            "minmov": 1,
            "session": session,
            "session_display": session,
            "subsessions": [{"description": "Regular Trading Hours", "id": "regular", "private": False,
                             "session": session, "session-display": session}],
            "type": "spot",
            "typespecs": ["crypto"],
            "has_intraday": True,
            "fractional": False,
            "listed_exchange": exchange,
            "legs": [symbol],
            "is_tradable": True,
            "minmove2": 0,
            "timezone": "Etc/UTC",
            "aliases": [],
            "alternatives": [],
            "is_replayable": True,
            "has_adjustment": False,
            "has_extended_hours": False,
            "bar_source": "trade",
            "bar_transform": "none",
            "bar_fillgaps": False,
            "visible_plots_set": "ohlcv",
            "is-tickbars-available": True,
            "base-currency-logoid": f"crypto/XTVC{base}",
            "currency-logoid": f"crypto/XTVC{quote}",
            "exchange_listed_name": exchange,
        }  # fmt: skip

    def _series(
        self, client: ChartClient, session: ChartSession, method: str, params: list[Any], now: float
    ) -> list[str]:
        """A series (re)defined: ``create_series [cs, sid, version, alias, res, count, range?]``.

        ``modify_series [cs, sid, version, alias, res, range]`` keeps the bar count. Both answer
        ``series_loading``, ``timescale_update`` and ``series_completed`` in one message.
        """
        ok_shape = len(params) >= 6 and all(isinstance(p, str) for p in params[1:5])
        count: int | None = None
        range_text = ""
        if ok_shape and method == "create_series":
            count = params[5] if isinstance(params[5], int) and not isinstance(params[5], bool) else None
            range_text = params[6] if len(params) > 6 else ""
            ok_shape = count is not None and count > 0 and isinstance(range_text, str) and len(params) <= 7
        elif ok_shape:
            range_text = params[5]
            ok_shape = isinstance(range_text, str) and len(params) <= 7
        if not ok_shape:
            return [self._critical(session.cs, method, params, now)]
        sid, version, alias, res_name = params[1], params[2], params[3], params[4]
        second = int(now)
        bounds = parse_range(range_text, second) if range_text else None
        if range_text and bounds is None:
            return [self._critical(session.cs, method, params, now)]
        with client.lock:
            previous = session.series.pop(sid, None)
            resolved = alias in session.aliases
            instrument = session.aliases.get(alias)
        if count is None:
            count = previous.bar_count if previous is not None else 300
        if not resolved or instrument is None:
            self._count("resolve error")
            return [packet("series_error", [session.cs, sid, version, "resolve error", NODE], now)]
        try:
            resolution = parse_resolution(res_name)
        except ResolutionError as exc:
            self._count(exc.reason)
            return [packet("series_error", [session.cs, sid, version, exc.reason, NODE], now)]
        if res_name in self.not_entitled:
            self._count("resolution_not_entitled")
            return [packet("series_error", [session.cs, sid, version, "resolution_not_entitled", NODE], now)]
        series = Series(sid, version, alias, instrument, resolution, min(count, MAX_BARS))
        current = resolution.start(second)
        if bounds is None:
            starts = self._last_starts(resolution, current, series.bar_count)
        else:
            starts = self._range_starts(resolution, bounds, current)
        out = [packet("series_loading", [session.cs, sid, version], now)]
        out.append(self._timescale(session.cs, series, starts, 0, second, now))
        if bounds is not None:
            timeframe = [session.cs, sid, version, 0, len(starts) - 1, range_text, True]
            out.append(packet("series_timeframe", timeframe, now))
        out.append(packet("series_completed", [session.cs, sid, "streaming", version,
                                               {"rt_update_period": self.rt_update_period}], now))  # fmt: skip
        series.oldest_start = starts[0] if starts else current
        series.oldest_index = 0
        series.live = bool(starts) and starts[-1] == current
        if series.live:
            series.forming_start = current
            series.forming_index = len(starts) - 1
        with client.lock:
            if session.cs in client.sessions:
                session.series[sid] = series
        self.stats.series_created += 1
        return out

    def _last_starts(self, resolution: Resolution, current: int, count: int) -> list[int]:
        """The open times of the last ``count`` bars up to the forming one, none before the listing."""
        floor = resolution.start(LISTED)
        if resolution.seconds:
            first = max(floor, current - (count - 1) * resolution.seconds)
            return list(range(first, current + 1, resolution.seconds))
        starts = [current]
        while len(starts) < count and starts[-1] > floor:
            starts.append(resolution.previous(starts[-1]))
        return starts[::-1]

    def _range_starts(self, resolution: Resolution, bounds: tuple[int, int], current: int) -> list[int]:
        """Every bar that overlaps [from, to], up to the forming one and at most ``MAX_BARS``."""
        first = resolution.start(max(bounds[0], LISTED))
        last = min(resolution.start(bounds[1]), current)
        starts: list[int] = []
        t = first
        while t <= last and len(starts) < MAX_BARS:
            starts.append(t)
            t = resolution.next(t)
        return starts

    def _timescale(self, cs: str, series: Series, starts: list[int], first_index: int, second: int, now: float) -> str:
        """``timescale_update`` with the bars opening at ``starts``, indexed from ``first_index``."""
        walk, symbol, resolution = self.walk, series.instrument, series.resolution
        rows: list[dict[str, Any]] = []
        values: list[float] = []
        for offset, start in enumerate(starts):
            bar, _ = walk.bar_at(symbol, resolution, start, second)
            values = walk.wire(symbol, start, bar)
            rows.append({"i": first_index + offset, "v": values})
        self.stats.bars_sent += len(rows)
        if starts and starts[-1] == resolution.start(second):
            series.last_sent = values  # the forming bar: the next du goes out when it changes
        body: dict[str, Any] = {"node": NODE, "s": rows, "ns": {"d": "", "indexes": []}, "t": series.version}
        if starts:
            body["lbs"] = {"bar_close_time": resolution.next(starts[-1])}
        marks = [[_mark_weight(resolution, t), t, first_index + i] for i, t in enumerate(starts)]
        changes = [float(t) for t in starts]
        third = {"index": first_index, "zoffset": 0, "changes": changes, "marks": marks, "index_diff": []}
        return packet("timescale_update", [cs, {series.sid: body}, third], now)

    def _more(self, client: ChartClient, session: ChartSession, params: list[Any], now: float) -> list[str]:
        """``request_more_data [cs, sid, n]``: the n bars before the oldest sent, indexed -1, -2, ..."""
        if len(params) < 3 or not isinstance(params[1], str) or not isinstance(params[2], int) or params[2] <= 0:
            return [self._critical(session.cs, "request_more_data", params, now)]
        with client.lock:
            series = session.series.get(params[1])
        if series is None:
            return [self._critical(session.cs, "request_more_data", params, now)]
        resolution = series.resolution
        floor = resolution.start(LISTED)
        starts: list[int] = []
        t = series.oldest_start
        while len(starts) < min(params[2], MAX_BARS) and t > floor:
            t = resolution.previous(t)
            starts.append(t)
        starts.reverse()
        first_index = series.oldest_index - len(starts)
        out = [self._timescale(session.cs, series, starts, first_index, int(now), now)]
        if starts:
            series.oldest_start, series.oldest_index = starts[0], first_index
        out.append(packet("series_completed", [session.cs, series.sid, "streaming", series.version,
                                               {"rt_update_period": self.rt_update_period}], now))  # fmt: skip
        return out

    # -- live updates -------------------------------------------------------------------------

    def updates(self, client: ChartClient) -> list[str]:
        """``du`` packets for every live series whose forming bar changed (or rolled) since the last one sent.

        When the bar rolls, one ``du`` carries the old index with its final values, any bars
        completed in between, and the new forming bar at the next index.
        """
        now = self.clock()
        second = int(now)
        walk = self.walk
        out = []
        for cs, series in client.live_series():
            resolution, symbol = series.resolution, series.instrument
            current = resolution.start(second)
            rows = []
            if current != series.forming_start:
                start, index = series.forming_start, series.forming_index
                while start < current:
                    rows.append({"i": index, "v": walk.wire(symbol, start, walk.bar(symbol, resolution, start))})
                    start, index = resolution.next(start), index + 1
                series.forming_start, series.forming_index = current, index
            values = walk.wire(symbol, current, walk.forming(symbol, resolution, current, second))
            if rows or values != series.last_sent:
                rows.append({"i": series.forming_index, "v": values})
                series.last_sent = values
                body = {"s": rows, "ns": {"d": "", "indexes": "nochange"}, "t": series.version,
                        "lbs": {"bar_close_time": resolution.next(current)}}  # fmt: skip
                out.append(packet("du", [cs, {series.sid: body}]))
        self.stats.du_sent += len(out)
        return out


# -- replay -------------------------------------------------------------------------------------

_REPLAY_CHART = ("series_loading", "symbol_resolved", "timescale_update", "series_timeframe", "series_completed", "du")


class ChartRecording:
    """The chart packets of a recording, sent on ``create_series`` rewritten to the client's own ids.

    Kept in capture order: ``series_loading``, ``symbol_resolved``, ``timescale_update``,
    ``series_timeframe``, ``series_completed`` and series ``du`` (study ``du`` entries, ``st``, are
    dropped: the client created no study). Every chart session id becomes the client's, every series
    id its series id, every version its version and every symbol alias its alias.
    """

    def __init__(self, payloads: list[list[str]]) -> None:
        self.messages: list[list[Any]] = []
        for message in payloads:
            kept = []
            for payload in message:
                if not payload.startswith('{"m":'):
                    continue
                decoded = orjson.loads(payload)
                if decoded.get("m") in _REPLAY_CHART:
                    kept.append(decoded)
            if kept:
                self.messages.append(kept)

    def __bool__(self) -> bool:
        return bool(self.messages)

    def packets_for(self, cs: str, sid: str, version: str, alias: str) -> list[str]:
        """One framed message per recorded message, addressed to the client's chart session and series."""
        out = []
        for message in self.messages:
            parts = []
            for decoded in message:
                rewritten = _rewrite(decoded, cs, sid, version, alias)
                if rewritten is not None:
                    parts.append(frame(orjson.dumps(rewritten).decode()))
            if parts:
                out.append("".join(parts))
        return out


def _rewrite(decoded: dict[str, Any], cs: str, sid: str, version: str, alias: str) -> dict[str, Any] | None:
    """A recorded chart packet with the client's ids in place of the recorded ones; None if nothing is left."""
    method = decoded["m"]
    p = list(decoded["p"])
    p[0] = cs
    if method == "symbol_resolved":
        p[1] = alias
    elif method in ("series_loading", "series_timeframe"):
        p[1], p[2] = sid, version
    elif method == "series_completed":
        p[1] = sid
        if len(p) > 3:
            p[3] = version
    elif method in ("timescale_update", "du"):
        entries = {k: v for k, v in p[1].items() if isinstance(v, dict) and "s" in v}
        if method == "du" and not entries:
            return None
        # Every recorded series becomes the client's one series (the last recorded one wins).
        p[1] = {sid: {**list(entries.values())[-1], "t": version}} if entries else {}
    return {**decoded, "p": p}
