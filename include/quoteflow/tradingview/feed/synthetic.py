"""The synthetic walk for the local feed: a random-walk price per symbol, sent as partial ``qsd`` updates.

Each update goes to every key that names its instrument, in one message (tv.har #66, #84), with
only the fields of that key's session set; an update left with no field for a key is not sent.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from quoteflow.settings import DEFAULT_SYMBOLS
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


def new_walks(count: int) -> dict[str, SymbolWalk]:
    """One walk per symbol of :func:`synthetic_universe`, each starting at its own deterministic price."""
    walks = {}
    for i, key in enumerate(synthetic_universe(count)):
        price = round(10.0 + (i * 37.0) % 5000.0, 2)
        walks[key] = SymbolWalk(key, price, price)
    return walks


# One instrument's update targets: (session id, key as sent, that session's field set).
Target = tuple[str, str, frozenset[str] | None]
Routes = tuple[tuple[SymbolWalk, tuple[Target, ...]], ...]


def snapshot_values(walk: SymbolWalk, fields: frozenset[str] | None) -> dict[str, Any]:
    """Everything sent so far for ``walk``, restricted to a session's field set (all when it set none)."""
    copied = dict(walk.sent)  # one C-level copy: another client's writer may be updating ``sent`` meanwhile
    return copied if fields is None else {k: v for k, v in copied.items() if k in fields}


def synthetic_messages(
    routes: Callable[[], Routes], per_message: int, rate: float, rng: random.Random, updates: Counter[str]
) -> Iterator[tuple[float, str | None]]:
    """(delay, message) forever: ``per_message`` updates round-robin over ``routes()``, ``rate`` updates/s.

    ``updates`` counts the packets sent per key. ``None`` for a message means nothing is subscribed yet.
    """
    delay = per_message / rate if rate > 0 else 0.0
    dumps = orjson.dumps
    index = 0
    while True:
        current = routes()
        if not current:
            yield delay, None
            continue
        now = int(time.time())
        parts = []
        for _ in range(per_message):
            walk, targets = current[index % len(current)]
            index += 1
            walk.seq += 1
            seq = walk.seq
            walk.price = price = max(0.01, round(walk.price * (1.0 + rng.gauss(0.0, 0.0005)), 4))
            change = round(price - walk.prev_close, 4)
            values: dict[str, Any] = {"lp": price, "volume": float(seq), "ch": change}
            r = rng.random()
            if r < 0.3:
                values["bid"] = round(price * 0.9999, 4)
                values["ask"] = round(price * 1.0001, 4)
                values["bid_size"] = rng.randint(1, 99)
            elif r < 0.5:
                values["lp_time"] = now
                values["chp"] = round(change / walk.prev_close * 100, 4)
            if seq == 1:
                values["currency_code"] = "USDT"
                values["update_mode"] = "streaming"
                values["high_price"] = 1e100
                values["prev_close_price"] = walk.prev_close
            if seq % 97 == 1:
                values["description"] = _DESCRIPTIONS[seq % len(_DESCRIPTIONS)]
            walk.sent.update(values)
            for qs, key, fields in targets:
                sent = values
                if fields is not None and not fields.issuperset(values):  # the superset test runs in C
                    sent = {k: v for k, v in values.items() if k in fields}
                if not sent:
                    continue
                updates[key] += 1
                parts.append(frame(dumps({"m": "qsd", "p": [qs, {"n": key, "s": "ok", "v": sent}]}).decode()))
        yield delay, ("".join(parts) if parts else None)
