"""The synthetic market of the local feed: one deterministic price path per symbol, and its bars at any resolution.

Everything is a pure function of (walk seed, symbol, time), never of what the server sent before, so
every connect (and every server start) sees the same history, and the walk "keeps running" while
nobody is connected. Prices are integers in ticks (1/pricescale) until they are sent.

The path is built top-down: a week's open, high, low and close come from a bounded noise around the
symbol's price level; each bar is split into its sub-bars (week → 7 days → 6 × 4 h → 4 × 1 h → 60 × 1 m;
other resolutions are runs of those) so that the sub-bars' first open, last close, highest high and lowest low are
exactly the parent's; a minute is split into 60 one-second prices that start at its open, touch its
high and low and end at its close. So every coarser bar is the exact aggregate of its one-minute bars,
and every one-minute bar the exact aggregate of the per-second prices that the quote ticks carry.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

_MASK = (1 << 64) - 1
_TO_UNIT = 2.0**-53
WEEK_ORIGIN = 345_600  # Monday 1970-01-05 00:00 UTC: TradingView's weekly bars start on Mondays
LISTED = 1_262_563_200  # Monday 2010-01-04 00:00 UTC: no synthetic bar starts earlier
# Nested bar lengths (s), coarsest first, and how many sub-bars each one splits into.
LEVELS = (604_800, 86_400, 14_400, 3_600, 60)
FANOUT = (7, 6, 4, 60)
_MINUTE_LEVEL = len(LEVELS) - 1
_LEVEL_OF = {seconds: level for level, seconds in enumerate(LEVELS)}
VOLUME_UNIT = 1000  # volume is kept in thousandths of the base asset

# Realistic levels for the project's default symbols (late 2025/2026); others get one from their name.
LEVELS_BY_SYMBOL = {"BINANCE:SOLUSDT": 140.0, "BINANCE:BTCUSDT": 95_000.0, "BINANCE:ETHUSDT": 3_300.0}
_PRICESCALE_BY_SYMBOL = {"BINANCE:SOLUSDT": 100, "BINANCE:BTCUSDT": 100, "BINANCE:ETHUSDT": 100}

Bar = tuple[int, int, int, int, int]  # open, high, low, close (ticks), volume (units)


class ResolutionError(ValueError):
    """A resolution the feed does not serve; ``reason`` is what TradingView answers in ``series_error``."""

    def __init__(self, resolution: str, reason: str) -> None:
        super().__init__(f"resolution {resolution!r}: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Resolution:
    """A chart resolution: ``name`` as the client sent it, ``seconds`` (0 for months), the nested level it builds on."""

    name: str
    seconds: int
    base_level: int  # the nested level whose bars make up one bar (itself when nested)
    nested: bool

    def start(self, t: int) -> int:
        """The open time of the bar containing unix second ``t``."""
        if self.seconds == 0:
            d = datetime.fromtimestamp(t, UTC)
            return int(datetime(d.year, d.month, 1, tzinfo=UTC).timestamp())
        if self.seconds == LEVELS[0]:
            return t - (t - WEEK_ORIGIN) % LEVELS[0]
        return t - t % self.seconds

    def next(self, start: int) -> int:
        """The open time of the bar after the one opening at ``start``."""
        if self.seconds == 0:
            d = datetime.fromtimestamp(start, UTC)
            year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
            return int(datetime(year, month, 1, tzinfo=UTC).timestamp())
        return start + self.seconds

    def previous(self, start: int) -> int:
        """The open time of the bar before the one opening at ``start``."""
        if self.seconds == 0:
            return self.start(start - 1)
        return start - self.seconds


# Minute counts TradingView offers every user (tv protocol notes §4); 1D/1W/1M and their plain forms.
_MINUTES = (1, 3, 5, 15, 30, 45, 60, 120, 180, 240)
_CALENDAR = {"1D": 86_400, "D": 86_400, "1W": 604_800, "W": 604_800, "1M": 0, "M": 0}


def parse_resolution(name: object) -> Resolution:
    """The :class:`Resolution` for a ``create_series`` resolution string, or :class:`ResolutionError`.

    ``"1"``, ``"60"``, ``"1D"``, ``"1W"``, ``"1M"``. Seconds (``"1S"``), ticks (``"1T"``) and custom minute
    counts (``"188"``) need a paid plan: ``resolution_not_entitled``. Anything else: ``unknown resolution``.
    """
    if not isinstance(name, str) or not name:
        raise ResolutionError(str(name), "unknown resolution")
    if name in _CALENDAR:
        seconds = _CALENDAR[name]
        return Resolution(name, seconds, _LEVEL_OF[86_400] if seconds == 0 else _LEVEL_OF[seconds], seconds != 0)
    if name.isdigit():
        minutes = int(name)
        if minutes not in _MINUTES:
            if 0 < minutes <= 1440:
                raise ResolutionError(name, "resolution_not_entitled")
            raise ResolutionError(name, "unknown resolution")
        seconds = minutes * 60
        if seconds in _LEVEL_OF:
            return Resolution(name, seconds, _LEVEL_OF[seconds], True)
        base = max(level for level, length in enumerate(LEVELS) if seconds % length == 0)
        return Resolution(name, seconds, base, False)
    if name[:-1].isdigit() and name[-1] in "ST":
        raise ResolutionError(name, "resolution_not_entitled")
    raise ResolutionError(name, "unknown resolution")


def _mix(x: int) -> int:
    """splitmix64's finaliser: a good 64-bit hash of an integer, in pure Python."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _unit(key: int, a: int, b: int, c: int = 0) -> float:
    """A uniform number in [0, 1) that depends only on the arguments."""
    inner = _mix((a * 0x9E3779B97F4A7C15 + b * 0xC2B2AE3D27D4EB4F + c * 0x165667B19E3779F9) & _MASK)
    return (_mix(key ^ inner) >> 11) * (2.0**-53)


def _draws(key: int, tag: int, start: int, count: int) -> list[float]:
    """``count`` uniform numbers in [0, 1) fixed by (symbol key, what, when): a hashed seed, then an LCG's top bits."""
    x = _mix(key ^ _mix((tag * 0x9E3779B97F4A7C15 + start * 0xC2B2AE3D27D4EB4F) & _MASK))
    out = []
    for _ in range(count):
        x = (x * 6364136223846793005 + 1442695040888963407) & _MASK
        out.append((x >> 11) * _TO_UNIT)
    return out


def combine(bars: list[Bar]) -> Bar:
    """One bar from consecutive bars: first open, highest high, lowest low, last close, summed volume."""
    return (
        bars[0][0],
        max(b[1] for b in bars),
        min(b[2] for b in bars),
        bars[-1][3],
        sum(b[4] for b in bars),
    )


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """What the walk knows of one symbol: its hash key, price level, tick size and weekly volume."""

    name: str
    key: int
    level: float
    pricescale: int
    week_volume: int


class Walk:
    """The deterministic market for one seed: prices, bars and forming bars of any symbol at any time."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.spec = lru_cache(maxsize=65_536)(self._spec)
        # Bounded: ~1.5 KB per split and ~1.5 KB per minute path; 5,000 symbols' current chains fit.
        self._children = lru_cache(maxsize=32_768)(self._split)
        self._seconds = lru_cache(maxsize=16_384)(self._minute_path)

    # -- symbols ------------------------------------------------------------------------------

    def _spec(self, symbol: str) -> SymbolSpec:
        digest = hashlib.blake2b(f"{self.seed}|{symbol}".encode(), digest_size=8).digest()
        key = int.from_bytes(digest, "big")
        level = LEVELS_BY_SYMBOL.get(symbol)
        if level is None:
            # Log-uniform between 0.1 and 1,000, four significant digits: a plausible crypto price.
            raw = 10 ** (-1.0 + 4.0 * _unit(key, 1, 0))
            level = float(f"{raw:.4g}")
        pricescale = _PRICESCALE_BY_SYMBOL.get(symbol) or 10 ** min(8, max(0, 5 - math.floor(math.log10(level))))
        notional = 2e9 if symbol in LEVELS_BY_SYMBOL else 1e8 * (0.2 + _unit(key, 2, 0))
        return SymbolSpec(symbol, key, level, pricescale, int(notional / level * VOLUME_UNIT))

    def price_level(self, symbol: str) -> float:
        """The level the symbol's walk wanders around (±13 % at most)."""
        return self.spec(symbol).level

    def _boundary(self, spec: SymbolSpec, week: int) -> int:
        """The price (ticks) at the start of week number ``week``: a bounded multi-scale noise around the level."""
        total = 0.0
        for octave, (period, amplitude) in enumerate(((1, 0.03), (4, 0.035), (16, 0.035), (64, 0.03))):
            j, r = divmod(week, period)
            f = r / period
            f = f * f * (3.0 - 2.0 * f)
            a = _unit(spec.key, 100 + octave, j) * 2.0 - 1.0
            b = _unit(spec.key, 100 + octave, j + 1) * 2.0 - 1.0
            total += amplitude * (a + (b - a) * f)
        return max(1, round(spec.level * math.exp(total) * spec.pricescale))

    # -- nested bars ---------------------------------------------------------------------------

    def node(self, symbol: str, level: int, start: int) -> Bar:
        """The bar of nested level ``level`` (0 = week ... 6 = minute) opening at ``start``."""
        if level == 0:
            spec = self.spec(symbol)
            week = (start - WEEK_ORIGIN) // LEVELS[0]
            o, c = self._boundary(spec, week), self._boundary(spec, week + 1)
            up = 0.004 + 0.05 * _unit(spec.key, 3, week) ** 2
            down = 0.004 + 0.05 * _unit(spec.key, 4, week) ** 2
            high = max(o, c) + math.ceil(max(o, c) * up)
            low = max(1, min(o, c) - math.ceil(min(o, c) * down))
            volume = int(spec.week_volume * (0.6 + 0.8 * _unit(spec.key, 5, week)))
            return (o, high, low, c, volume)
        parent_len = LEVELS[level - 1]
        if level == 1:
            parent = start - (start - WEEK_ORIGIN) % parent_len
        else:
            parent = start - start % parent_len
        packed = self._children(symbol, level - 1, parent)
        i = 5 * ((start - parent) // LEVELS[level])
        return (packed[i], packed[i + 1], packed[i + 2], packed[i + 3], packed[i + 4])

    def _split(self, symbol: str, level: int, start: int) -> array[int]:
        """The sub-bars of a nested bar: a bridge from its open to its close that touches its high and low.

        Packed five numbers per sub-bar (open, high, low, close, volume) so that a cached hour costs 2.4 KB.
        """
        o, high, low, c, volume = self.node(symbol, level, start)
        n = FANOUT[level]
        draw = iter(_draws(self.spec(symbol).key, 10 + level, start, 5 * n + 3)).__next__
        steps = [0.0]
        for _ in range(n):
            steps.append(steps[-1] + draw() * 2.0 - 1.0)
        sigma = (high - low) * 0.6 / math.sqrt(n)
        xs = [float(o)]
        for i in range(1, n):
            xs.append(o + (c - o) * i / n + sigma * (steps[i] - steps[n] * i / n))
        xs.append(float(c))
        at_high = int(draw() * n)
        at_low = int(draw() * n)
        if at_low == at_high:
            at_low = (at_high + 1 + int(draw() * (n - 1))) % n
        width = max(1, n // 8)
        for child, target in ((at_high, high), (at_low, low)):
            # Lead the bridge towards the extreme around the child that holds it, so the extreme is no lone spike.
            edge = child + 1 if child < n - 1 else child
            for j in range(max(1, edge - width + 1), min(n, edge + width)):
                xs[j] += 0.6 * (1.0 - abs(j - edge) / width) * (target - xs[j])
        points = [o] + [min(high, max(low, round(x))) for x in xs[1:n]] + [c]
        weights = [0.5 + draw() for _ in range(n)]
        total = sum(weights)
        volumes = [int(volume * w / total) for w in weights]
        for i in range(volume - sum(volumes)):
            volumes[i] += 1
        children = array("q")
        wick = 0.5 * min(1.0, 3.0 / math.sqrt(n))  # many sub-bars: each one's wick is a smaller share of the range
        for i in range(n):
            co, cc = points[i], points[i + 1]
            top, bottom = max(co, cc), min(co, cc)
            up, down = draw(), draw()
            ch = high if i == at_high else top + int((high - top) * wick * up * up)
            cl = low if i == at_low else bottom - int((bottom - low) * wick * down * down)
            children.extend((co, ch, cl, cc, volumes[i]))
        return children

    def _minute_path(self, symbol: str, start: int) -> tuple[array[int], array[int], array[int]]:
        """The minute's 60 per-second prices (open first, close last, high and low touched), running max and min."""
        o, high, low, c, _ = self.node(symbol, _MINUTE_LEVEL, start)
        draw = iter(_draws(self.spec(symbol).key, 20, start, 64)).__next__
        a = 1 + int(draw() * 57)
        b = 1 + int(draw() * 57)
        if b == a:
            b = a + 1
        first, second = (high, low) if draw() < 0.5 else (low, high)
        anchors = ((0, o), (min(a, b), first), (max(a, b), second), (59, c))
        wiggle = (high - low) * 0.12
        prices = []
        segment = 0
        for s in range(60):
            while s > anchors[segment + 1][0]:
                segment += 1
            (s0, p0), (s1, p1) = anchors[segment], anchors[segment + 1]
            if s in (s0, s1):
                prices.append(p0 if s == s0 else p1)
                continue
            x = p0 + (p1 - p0) * (s - s0) / (s1 - s0) + wiggle * (draw() * 2.0 - 1.0)
            prices.append(min(high, max(low, round(x))))
        highs, lows = array("q"), array("q")
        top, bottom = prices[0], prices[0]
        for p in prices:
            top, bottom = max(top, p), min(bottom, p)
            highs.append(top)
            lows.append(bottom)
        return array("q", prices), highs, lows

    # -- what the server sends ------------------------------------------------------------------

    def price(self, symbol: str, second: int) -> int:
        """The price (ticks) at unix second ``second``: what a quote tick with ``lp_time = second`` carries."""
        start = second - second % 60
        return self._seconds(symbol, start)[0][second - start]

    def bar(self, symbol: str, resolution: Resolution, start: int) -> Bar:
        """The complete bar of ``resolution`` opening at ``start`` (a bar start of that resolution)."""
        if resolution.nested:
            return self.node(symbol, resolution.base_level, start)
        length = LEVELS[resolution.base_level]
        parts = range(start, resolution.next(start), length)
        return combine([self.node(symbol, resolution.base_level, t) for t in parts])

    def forming(self, symbol: str, resolution: Resolution, start: int, second: int) -> Bar:
        """The bar opening at ``start`` as it stands at ``second`` (every price up to and including that second)."""
        if resolution.nested:
            return self._partial(symbol, resolution.base_level, start, second)
        length = LEVELS[resolution.base_level]
        current = second - second % length
        done = [self.node(symbol, resolution.base_level, t) for t in range(start, current, length)]
        return combine([*done, self._partial(symbol, resolution.base_level, current, second)])

    def _partial(self, symbol: str, level: int, start: int, second: int) -> Bar:
        if level == _MINUTE_LEVEL:
            prices, highs, lows = self._seconds(symbol, start)
            i = second - start
            volume = self.node(symbol, level, start)[4] * (i + 1) // 60
            return (prices[0], highs[i], lows[i], prices[i], volume)
        length = LEVELS[level + 1]
        k = (second - start) // length
        forming = self._partial(symbol, level + 1, start + k * length, second)
        if k == 0:
            return forming
        packed = self._children(symbol, level, start)
        end = 5 * k
        return (
            packed[0],
            max(max(packed[1:end:5]), forming[1]),
            min(min(packed[2:end:5]), forming[2]),
            forming[3],
            sum(packed[4:end:5]) + forming[4],
        )

    def bar_at(self, symbol: str, resolution: Resolution, start: int, second: int) -> tuple[Bar, bool]:
        """The bar opening at ``start`` seen at ``second``: (values, closed); the forming bar is not closed."""
        if resolution.next(start) <= second:
            return self.bar(symbol, resolution, start), True
        return self.forming(symbol, resolution, start, second), False

    def to_price(self, symbol: str, ticks: int) -> float:
        """Ticks as the price number sent on the wire."""
        return ticks / self.spec(symbol).pricescale

    def wire(self, symbol: str, start: int, bar: Bar) -> list[float]:
        """``[time, open, high, low, close, volume]`` as ``timescale_update``/``du`` carry a bar."""
        scale = self.spec(symbol).pricescale
        o, h, low, c, v = bar
        return [float(start), o / scale, h / scale, low / scale, c / scale, v / VOLUME_UNIT]

    def day_close_before(self, symbol: str, second: int) -> int:
        """Yesterday's close (ticks): the ``prev_close_price`` behind ``ch``/``chp``."""
        day = second - second % 86_400
        return self.node(symbol, 1, day - 86_400)[3]
