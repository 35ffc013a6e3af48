"""The feed's walk: a pure function of (seed, symbol, time) whose bars at every resolution agree with its ticks."""

from __future__ import annotations

import random

import pytest

from quoteflow.tradingview.feed.walk import (
    LISTED,
    ResolutionError,
    Walk,
    combine,
    parse_resolution,
)

NOW = 1_796_180_000
SYMBOLS = ("BINANCE:SOLUSDT", "BINANCE:BTCUSDT", "SYNTH:S0042")


def test_each_minute_is_its_per_second_prices_and_every_coarser_bar_its_minutes():
    walk = Walk(0)
    minute = parse_resolution("1")
    rng = random.Random(5)
    for _ in range(60):
        symbol = rng.choice(SYMBOLS)
        t = NOW - rng.randrange(0, 10**8)
        start = minute.start(t)
        o, h, low, c, _ = walk.bar(symbol, minute, start)
        prices = [walk.price(symbol, start + s) for s in range(60)]
        assert (prices[0], max(prices), min(prices), prices[-1]) == (o, h, low, c)
        for name in ("3", "5", "15", "30", "45", "60", "120", "180", "240", "1D"):
            resolution = parse_resolution(name)
            bar_start = resolution.start(t)
            parts = [walk.bar(symbol, minute, x) for x in range(bar_start, resolution.next(bar_start), 60)]
            assert combine(parts) == walk.bar(symbol, resolution, bar_start), name
            second = bar_start + rng.randrange(0, resolution.next(bar_start) - bar_start)
            done = [walk.bar(symbol, minute, x) for x in range(bar_start, second - second % 60, 60)]
            forming = combine([*done, walk.forming(symbol, minute, second - second % 60, second)])
            assert walk.forming(symbol, resolution, bar_start, second) == forming, name


def test_weeks_and_months_are_their_days():
    walk = Walk(0)
    day = parse_resolution("1D")
    for name, length in (("1W", 7), ("1M", None)):
        resolution = parse_resolution(name)
        start = resolution.start(NOW - 90 * 86_400)
        days = [walk.bar("BINANCE:ETHUSDT", day, t) for t in range(start, resolution.next(start), 86_400)]
        assert length is None or len(days) == length
        assert combine(days) == walk.bar("BINANCE:ETHUSDT", resolution, start)


def test_the_walk_depends_on_seed_symbol_and_time_only():
    minute = parse_resolution("1")
    start = minute.start(NOW)
    a, b = Walk(0), Walk(0)
    b.bar("BINANCE:SOLUSDT", parse_resolution("1W"), parse_resolution("1W").start(NOW))  # other cache state
    assert a.bar("BINANCE:SOLUSDT", minute, start) == b.bar("BINANCE:SOLUSDT", minute, start)
    assert a.bar("BINANCE:SOLUSDT", minute, start) != Walk(1).bar("BINANCE:SOLUSDT", minute, start)
    assert a.bar("BINANCE:SOLUSDT", minute, start) != a.bar("BINANCE:ETHUSDT", minute, start)


def test_bars_are_valid_and_stay_near_the_level():
    walk = Walk(0)
    week = parse_resolution("1W")
    for symbol, level in (("BINANCE:SOLUSDT", 140), ("BINANCE:BTCUSDT", 95_000), ("BINANCE:ETHUSDT", 3_300)):
        scale = walk.spec(symbol).pricescale
        start = week.start(LISTED)
        while start < NOW:
            o, h, low, c, v = walk.bar(symbol, week, start)
            assert low <= min(o, c) <= max(o, c) <= h and v > 0
            assert 0.8 * level < low / scale and h / scale < 1.2 * level
            start = week.next(start)


def test_resolutions_tradingview_refuses_get_its_reasons():
    assert parse_resolution("1D").seconds == 86_400 and parse_resolution("D").seconds == 86_400
    assert not parse_resolution("45").nested and parse_resolution("60").nested
    for name in ("1S", "5S", "1T", "188"):
        with pytest.raises(ResolutionError) as exc:
            parse_resolution(name)
        assert exc.value.reason == "resolution_not_entitled"
    for name in ("", "abc", "0", "99999", "2X"):
        with pytest.raises(ResolutionError, match="unknown resolution"):
            parse_resolution(name)
