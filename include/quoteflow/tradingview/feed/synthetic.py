"""The synthetic quotes of the local feed: the walk's price per symbol (:mod:`.walk`), sent as partial ``qsd`` updates.

Each update goes to every key that names its instrument, in one message (tv.har #66, #84), with
only the fields of that key's session set; an update left with no field for a key is not sent.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from quoteflow.settings import DEFAULT_SYMBOLS
from quoteflow.tradingview.feed.walk import Walk
from quoteflow.tradingview.protocol import frame

# Non-ASCII text (CJK plus one character outside the BMP) so clients meet the UTF-16 length rule.
_DESCRIPTIONS = ("Bitcoin / Tether", "比特币 / 泰达币", "Solana 🚀 / Tether", "Éther / Tether")


def synthetic_universe(count: int) -> list[str]:
    """The symbols a synthetic feed knows: the project defaults first, then ``SYNTH:S0003`` ..."""
    names = list(DEFAULT_SYMBOLS[:count])
    names.extend(f"SYNTH:S{i:04d}" for i in range(len(names), count))
    return names


@dataclass(slots=True)
class SymbolWalk:
    """The server-side truth for one synthetic symbol; ``seq`` doubles as its volume."""

    key: str
    price: float
    prev_close: float
    seq: int = 0
    sent: dict[str, Any] = field(default_factory=dict)


def new_walks(count: int, walk: Walk) -> dict[str, SymbolWalk]:
    """One entry per symbol of :func:`synthetic_universe`; prices come from ``walk`` (the same walk the bars use)."""
    walks = {}
    for key in synthetic_universe(count):
        level = walk.price_level(key)
        walks[key] = SymbolWalk(key, level, level)
    return walks


# One instrument's update targets: (session id, key as sent, that session's field set).
Target = tuple[str, str, frozenset[str] | None]
Routes = tuple[tuple[SymbolWalk, tuple[Target, ...]], ...]


def snapshot_values(entry: SymbolWalk, fields: frozenset[str] | None) -> dict[str, Any]:
    """Everything sent so far for ``entry``, restricted to a session's field set (all when it set none)."""
    copied = dict(entry.sent)  # one C-level copy: another client's writer may be updating ``sent`` meanwhile
    return copied if fields is None else {k: v for k, v in copied.items() if k in fields}


def synthetic_messages(
    routes: Callable[[], Routes],
    per_message: int,
    rate: float,
    rng: random.Random,
    updates: Counter[str],
    walk: Walk,
    clock: Callable[[], float],
    last_tick: dict[str, int],
) -> Iterator[tuple[float, str | None]]:
    """(delay, message) forever: ``per_message`` updates round-robin over ``routes()``, ``rate`` updates/s.

    Each update carries the walk's price at the feed's current second as ``lp`` with that second as
    ``lp_time``, so it lies within that minute's bar. When a minute rolls, every symbol whose last tick
    in it came before its last second gets one more, the minute's close at second :59: the last tick
    of each minute equals the bar's close. ``last_tick`` (symbol → second of the last tick this
    client got, a snapshot included) belongs to the client, so the server can add a snapshot to it.
    ``volume`` is the per-symbol update count (clients detect loss by it). ``updates`` counts the
    packets sent per key; ``None`` means nothing is subscribed yet.
    """
    delay = per_message / rate if rate > 0 else 0.0
    dumps = orjson.dumps
    index = 0
    minute = -1

    def update(entry: SymbolWalk, targets: tuple[Target, ...], second: int, parts: list[str]) -> None:
        entry.seq += 1
        seq = entry.seq
        symbol = entry.key
        scale = walk.spec(symbol).pricescale
        price = walk.price(symbol, second) / scale
        prev_close = walk.day_close_before(symbol, second) / scale
        entry.price, entry.prev_close = price, prev_close
        change = round(price - prev_close, 8)
        values: dict[str, Any] = {"lp": price, "lp_time": second, "volume": float(seq), "ch": change}
        r = rng.random()
        if r < 0.3:
            values["bid"] = round(price * 0.9999, 8)
            values["ask"] = round(price * 1.0001, 8)
            values["bid_size"] = rng.randint(1, 99)
        elif r < 0.5:
            values["chp"] = round(change / prev_close * 100, 4)
        if seq == 1:
            values["currency_code"] = "USDT"
            values["update_mode"] = "streaming"
            values["high_price"] = 1e100
            values["prev_close_price"] = prev_close
        if seq % 97 == 1:
            values["description"] = _DESCRIPTIONS[seq % len(_DESCRIPTIONS)]
        entry.sent.update(values)
        last_tick[symbol] = second
        for qs, key, fields in targets:
            sent = values
            if fields is not None and not fields.issuperset(values):  # the superset test runs in C
                sent = {k: v for k, v in values.items() if k in fields}
            if not sent:
                continue
            updates[key] += 1
            parts.append(frame(dumps({"m": "qsd", "p": [qs, {"n": key, "s": "ok", "v": sent}]}).decode()))

    while True:
        current = routes()
        if not current:
            yield delay, None
            continue
        second = int(clock())
        parts: list[str] = []
        if second // 60 != minute:
            minute = second // 60
            by_symbol = {entry.key: (entry, targets) for entry, targets in current}
            for symbol, at in list(last_tick.items()):
                if at // 60 < minute:
                    del last_tick[symbol]
                    if at % 60 != 59 and symbol in by_symbol:
                        update(*by_symbol[symbol], at - at % 60 + 59, parts)
        for _ in range(per_message):
            entry, targets = current[index % len(current)]
            index += 1
            update(entry, targets, second, parts)
        yield delay, ("".join(parts) if parts else None)
