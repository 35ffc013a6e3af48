"""Chart sessions: one ``cs_`` session per (symbol, resolution), its bars as Bar records.

Set-up per series (protocol notes §4), after ``set_auth_token``::

    chart_create_session [cs, ""]
    resolve_symbol       [cs, "sds_sym_1", "={\\"adjustment\\":\\"splits\\",\\"symbol\\":\\"BINANCE:SOLUSDT\\"}"]
    create_series        [cs, "sds_1", "s1", "sds_sym_1", "1", 300, ""]

One session per series, as TradingView's reference client does, so an error is scoped to its
session: a ``series_error``, ``symbol_error`` or ``critical_error`` naming a ``cs_`` session drops
that series only (``chart_delete_session`` is sent) and everything else keeps streaming.

Bars arrive in ``timescale_update`` (history: every bar ``closed`` but the last when it is still
forming) and ``du`` (the forming bar, same index ``i``; a new index closes the previous bar, which
is emitted once more with ``closed=true`` and its final values). Bars inside a recorded feed gap
are marked ``origin: gap_fill``. ``v`` is ``[time, open, high, low, close, volume]``; ``volume``
may be missing or ``1e+100`` (null).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from quoteflow.bars import InvalidBar, bar_key, make_bar
from quoteflow.quotes import format_timestamp
from quoteflow.settings import DEFAULT_HISTORY_BARS, ConfigError
from quoteflow.tradingview.protocol import encode_packet
from quoteflow.tradingview.session import new_session_id

logger = logging.getLogger(__name__)

SERIES_ID = "sds_1"
SYMBOL_ALIAS = "sds_sym_1"
SERIES_VERSION = "s1"
# The most bars one create_series asks for: a gap longer than this many bars is filled only this far back.
MAX_BARS = 10_000
NO_VALUE = 1e100
BAR_METHODS = frozenset({"timescale_update", "du"})
_UNITS = {"S": 1, "D": 86_400, "W": 7 * 86_400, "M": 31 * 86_400}

Bar = dict[str, Any]


def resolution_seconds(resolution: str) -> int:
    """Length of one bar: ``"1"`` → 60, ``"60"`` → 3600, ``"1D"`` / ``"D"`` → 86400, ``"30S"`` → 30 (a month ~31 d)."""
    text = resolution.strip().upper()
    if not text:
        raise ConfigError("empty bar resolution; use minutes (1, 5, 60), 1D, 1W or 1M")
    unit = text[-1]
    if unit.isdigit():
        count, seconds = text, 60
    elif unit in _UNITS:
        count, seconds = text[:-1] or "1", _UNITS[unit]
    else:
        count, seconds = "", 0
    if not count.isdigit() or int(count) <= 0:
        raise ConfigError(f"bar resolution {resolution!r} is not one TradingView knows; use 1, 5, 60, 1D, 1W or 1M")
    return int(count) * seconds


def resolve_spec(symbol: str) -> str:
    """The ``resolve_symbol`` spec of a subscribed key: ``=``-spec keys as they are, plain ones wrapped."""
    if symbol.startswith("="):
        return symbol
    return "=" + orjson.dumps({"adjustment": "splits", "symbol": symbol}, option=orjson.OPT_SORT_KEYS).decode()


@dataclass
class Series:
    """One (symbol, resolution) series: its session, the forming bar, and what to fill after a gap."""

    symbol: str
    resolution: str
    period: int
    session_id: str = ""
    series_id: str = SERIES_ID
    alias: str = SYMBOL_ALIAS
    key_bytes: bytes = b""
    last_index: int | None = None
    last_bar: list[Any] | None = None  # v of the forming bar: [time, o, h, l, c, volume?]
    completed: bool = False
    update_mode: str | None = None
    dropped: str | None = None
    fill_from: float | None = None  # epoch seconds: bars starting in [fill_from, fill_to] are gap_fill
    fill_to: float | None = None
    requested: int = 0
    range_: str = ""

    def __post_init__(self) -> None:
        self.key_bytes = bar_key(self.symbol, self.resolution).encode("utf-8")


@dataclass
class ChartStats:
    """Counters for the summary: bars emitted by origin, history requests, errors by kind."""

    bars: Counter[str] = field(default_factory=Counter)
    history_requests: int = 0
    packets: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class ChartSessions:
    """Every chart series of a client; survives reconnects (each connection gets fresh session ids)."""

    def __init__(
        self,
        symbols: Iterable[str],
        resolutions: Iterable[str],
        *,
        history_bars: int = DEFAULT_HISTORY_BARS,
        bar_range: str = "",
    ) -> None:
        """Validate resolutions and counts now; nothing is sent yet."""
        if not isinstance(history_bars, int) or isinstance(history_bars, bool) or not 1 <= history_bars <= MAX_BARS:
            raise ConfigError(f"history_bars must be an integer from 1 to {MAX_BARS}, got {history_bars!r}")
        if bar_range and not _valid_range(bar_range):
            raise ConfigError(f"bar range {bar_range!r} must be 'r,<from>:<to>' in unix seconds, from < to")
        self.history_bars = history_bars
        self.series: list[Series] = []
        seen: set[tuple[str, str]] = set()
        for resolution in resolutions:
            period = resolution_seconds(resolution)
            for symbol in symbols:
                if (symbol, resolution) in seen:
                    continue
                seen.add((symbol, resolution))
                self.series.append(Series(symbol, resolution, period, range_=bar_range))
        self.by_session: dict[str, Series] = {}
        self.stats = ChartStats()
        self.outbox: list[str] = []

    @property
    def active(self) -> list[Series]:
        """The series still streaming (not dropped by an error)."""
        return [s for s in self.series if s.dropped is None]

    @property
    def symbols(self) -> list[str]:
        """Distinct symbols of the active series, in order."""
        return list(dict.fromkeys(s.symbol for s in self.active))

    @property
    def history_done(self) -> bool:
        """True once every active series has sent ``series_completed`` on this connection."""
        return all(s.completed for s in self.active)

    def mark_gap(self, start: float, end: float | None = None) -> None:
        """Bars from ``start``'s bar up to ``end`` (epoch s; open = until the next history) become gap_fill."""
        for s in self.active:
            begin = math.floor(start / s.period) * s.period
            s.fill_from = begin if s.fill_from is None else min(s.fill_from, begin)
            s.fill_to = end

    def close_gap(self, end: float) -> None:
        """The gap ended at ``end``: fix the upper bound of every series' pending fill window."""
        for s in self.active:
            if s.fill_from is not None and s.fill_to is None:
                s.fill_to = end

    def setup_packets(self, now: float | None = None) -> list[str]:
        """The framed packets that (re)open every active series on a fresh connection, with its history request.

        The count is ``history_bars``, or more when a pending gap reaches further back (at most :data:`MAX_BARS`).
        """
        now = time.time() if now is None else now
        self.by_session.clear()
        self.outbox.clear()
        packets: list[str] = []
        for s in self.active:
            s.session_id = new_session_id("cs_")
            s.last_index = None
            s.last_bar = None
            s.completed = False
            count = self.history_bars
            if s.fill_from is not None:
                count = max(count, min(MAX_BARS, math.ceil((now - s.fill_from) / s.period) + 2))
            s.requested = count
            self.by_session[s.session_id] = s
            cs = s.session_id
            packets.append(encode_packet("chart_create_session", [cs, ""]))
            packets.append(encode_packet("resolve_symbol", [cs, s.alias, resolve_spec(s.symbol)]))
            create = [cs, s.series_id, SERIES_VERSION, s.alias, s.resolution, count, s.range_]
            packets.append(encode_packet("create_series", create))
            self.stats.history_requests += 1
        return packets

    def adopt(self, series: Series, session_id: str, series_id: str = SERIES_ID) -> None:
        """Attach ``series`` to an existing session id (replaying captured frames of someone else's session)."""
        series.session_id = session_id
        series.series_id = series_id
        self.by_session[session_id] = series

    # -- inbound ---------------------------------------------------------------------------

    def handle(self, method: str, params: list[Any], received_at: str, now: float | None = None) -> list[Series | Bar]:
        """Route one packet of a chart session; the bars it yields, each preceded by its series.

        Returns a flat list ``[series, bar, series, bar, ...]`` (cheap to build, no tuples). ``now`` (epoch s)
        decides whether the last bar of a history burst is still forming.

        Raw packet: ``{"m":"du","p":["cs_x",{"sds_1":{"s":[{"i":299,"v":[1558466100.0,8019.56,8020.05,7985.36,
        8004.77,59.86]}],"ns":{"d":"","indexes":[]},"t":"s1"}}]}``.
        """
        series = self.by_session.get(params[0]) if params and type(params[0]) is str else None
        if series is None or series.dropped is not None:
            self.stats.errors["foreign_chart_packet"] += 1
            return []
        self.stats.packets += 1
        if method == "timescale_update" or method == "du":
            body = params[1] if len(params) > 1 else None
            if type(body) is not dict:
                self._bad(series, method, "no series map")
                return []
            entry = body.get(series.series_id)
            if entry is None:
                return []  # an empty map (tick marks only, tv.har #51) or a study's update
            bars = entry.get("s") if type(entry) is dict else None
            if type(bars) is not list:
                if type(entry) is not dict or "st" not in entry:
                    self._bad(series, method, "series entry without 's'")
                return []
            now = time.time() if now is None else now
            if method == "du":
                return self._live(series, bars, received_at)
            return self._history(series, bars, received_at, now)
        if method == "series_completed":
            series.completed = True
            if len(params) > 2 and type(params[2]) is str:
                series.update_mode = params[2]
            series.fill_from = series.fill_to = None
            return []
        if method == "series_error":
            reason = " ".join(str(p) for p in params[2:])
            self.drop(series, "series_error", reason)
            return []
        if method == "symbol_error":
            self.drop(series, "symbol_error", " ".join(str(p) for p in params[2:]))
            return []
        if method == "critical_error":
            self.drop(series, "critical_error", " ".join(str(p) for p in params[1:]))
            return []
        return []  # symbol_resolved, series_loading, series_timeframe, study_*: nothing to emit

    def drop(self, series: Series, kind: str, detail: str) -> None:
        """Stop one series for good (reported once); the others and the quote session keep streaming."""
        self.stats.errors[kind] += 1
        if series.dropped is not None:
            return
        series.dropped = f"{kind}: {detail}"[:300]
        left = len(self.active)
        logger.error(
            "TradingView refused the %s bars of %s (%s: %s); dropped that series, %d series left",
            series.resolution,
            series.symbol,
            kind,
            detail[:200],
            left,
        )
        self.outbox.append(encode_packet("chart_delete_session", [series.session_id]))

    def _bad(self, series: Series, method: str, why: str) -> None:
        self.stats.errors["bad_bar_packet"] += 1
        logger.warning("skipped a %s for %s|%s: %s", method, series.symbol, series.resolution, why)

    def _bar(self, series: Series, v: Any, closed: bool, origin: str, received_at: str) -> Bar | None:
        """One ``v`` as a validated Bar record; an unusable one is counted and logged, never sent."""
        if type(v) is not list or len(v) < 5:
            self.stats.errors["invalid_bar"] += 1
            logger.warning("skipped a bar of %s|%s: v is %r", series.symbol, series.resolution, str(v)[:80])
            return None
        volume: Any = v[5] if len(v) > 5 else None
        if isinstance(volume, (int, float)) and volume >= NO_VALUE:
            volume = None
        if any(type(x) in (int, float) and abs(x) >= NO_VALUE for x in v[1:5]):
            # 1e+100 is "no value": a bar without a price is no bar (a null volume is fine).
            self.stats.errors["invalid_bar"] += 1
            logger.warning("skipped a bar of %s|%s without a price: %r", series.symbol, series.resolution, v[:5])
            return None
        try:
            return make_bar(
                symbol=series.symbol,
                resolution=series.resolution,
                start=float(v[0]),
                open=v[1],
                high=v[2],
                low=v[3],
                close=v[4],
                volume=volume,
                closed=closed,
                origin=origin,
                received_at=received_at,
            )
        except (InvalidBar, TypeError, ValueError, OverflowError, OSError) as exc:
            self.stats.errors["invalid_bar"] += 1
            logger.warning("skipped a bar of %s|%s (%s): %r", series.symbol, series.resolution, exc, str(v)[:120])
            return None

    def _history(self, series: Series, bars: list[Any], received_at: str, now: float) -> list[Series | Bar]:
        out: list[Series | Bar] = []
        entries = [b for b in bars if type(b) is dict and type(b.get("i")) is int and type(b.get("v")) is list]
        if len(entries) != len(bars):
            self._bad(series, "timescale_update", f"{len(bars) - len(entries)} bar(s) without i/v")
        entries.sort(key=lambda b: b["i"])
        fill_from, fill_to = series.fill_from, series.fill_to
        newest = len(entries) - 1
        for n, entry in enumerate(entries):
            v = entry["v"]
            start = v[0] if v and type(v[0]) in (int, float) else None
            forming = n == newest and start is not None and start + series.period > now and not series.range_
            origin = "history"
            if fill_from is not None and start is not None and fill_from <= start <= (fill_to or math.inf):
                origin = "gap_fill"
            bar = self._bar(series, v, not forming, origin, received_at)
            if bar is not None:
                out.append(series)
                out.append(bar)
                self.stats.bars[origin] += 1
            if series.last_index is None or entry["i"] >= series.last_index:
                series.last_index = entry["i"]
                series.last_bar = v
        return out

    def _live(self, series: Series, bars: list[Any], received_at: str) -> list[Series | Bar]:
        out: list[Series | Bar] = []
        for entry in bars:
            if type(entry) is not dict or type(entry.get("i")) is not int or type(entry.get("v")) is not list:
                self._bad(series, "du", "bar without i/v")
                continue
            index, v = entry["i"], entry["v"]
            last = series.last_index
            if last is not None and index > last and series.last_bar is not None:
                # TradingView moved on: the previous bar is final, emit it once more as closed.
                final = self._bar(series, series.last_bar, True, "live", received_at)
                if final is not None:
                    out.append(series)
                    out.append(final)
                    self.stats.bars["live"] += 1
            closed = last is not None and index < last  # a correction of an older bar
            bar = self._bar(series, v, closed, "live", received_at)
            if bar is not None:
                out.append(series)
                out.append(bar)
                self.stats.bars["live"] += 1
            if last is None or index >= last:
                series.last_index = index
                series.last_bar = v
        return out


def _valid_range(text: str) -> bool:
    head, _, span = text.partition(",")
    first, _, last = span.partition(":")
    return head == "r" and first.isdigit() and last.isdigit() and int(first) < int(last)


def bar_range(start: float, end: float) -> str:
    """The ``create_series`` range of a time span: ``r,<from>:<to>`` in unix seconds."""
    return f"r,{int(start)}:{int(end)}"


def received_now() -> str:
    """The producer clock as a bar's ``received_at``."""
    return format_timestamp(time.time(), milliseconds=True)
