"""Shards of the symbol list: at most ``shard_size`` symbols per websocket, connections opened spaced with jitter.

The split is deterministic (the same list and size give the same shards, every run): duplicates are
dropped (the first one counts, as the quote session does), then the list is cut, in its own order,
into ``ceil(n / shard_size)`` contiguous shards whose sizes differ by at most one. Shard ``k``
waits ``k * spacing + uniform(0, spacing * JITTER_FRACTION)`` seconds before it connects, so N
shards starting together (a new run, or every shard retrying after one Kafka outage) reach the
server one by one instead of in one burst that trips its handshake rate limit (HTTP 429).

Why the default is 500 (TradingView documents no per-connection cap; the protocol notes record
none): the notes advise few connections ("reuse one socket for many symbols", login throttling,
429 on connect), and one ``quote_add_symbols`` may carry many symbols. What grows with a shard is
what one socket must carry at once: every (re)connect re-subscribes the whole shard and is answered
with a full snapshot per symbol, and all of a shard's symbols go dark together when its socket
drops. 500 keeps that burst and that blast radius small while 5,000 symbols need only 10 handshakes;
``bench/producer.py`` measures one connection at 5,000 symbols against 10 shards of 500.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quoteflow.settings import ConfigError

DEFAULT_SHARD_SIZE = 500
MAX_SHARD_SIZE = 5000  # the largest single connection bench/producer.py measures
DEFAULT_CONNECT_SPACING_S = 5.0
MAX_CONNECT_SPACING_S = 60.0
JITTER_FRACTION = 0.5  # jitter is uniform in [0, spacing * JITTER_FRACTION)
UNSHARDED = "0"


@dataclass(frozen=True)
class Shard:
    """One websocket's share of the symbols and when it may connect (seconds after its task starts)."""

    shard: str
    index: int
    count: int
    symbols: tuple[str, ...]
    start_delay_s: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (XCom, the CLI): ``symbols`` as a list."""
        out = asdict(self)
        out["symbols"] = list(self.symbols)
        return out


def check_shard_size(shard_size: object) -> int:
    """``shard_size`` as an int in ``[1, MAX_SHARD_SIZE]``, or a ConfigError saying what to set."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or not 1 <= shard_size <= MAX_SHARD_SIZE:
        raise ConfigError(
            f"shard_size must be a whole number of symbols per websocket from 1 to {MAX_SHARD_SIZE}, "
            f"got {shard_size!r}; set shard_size (default {DEFAULT_SHARD_SIZE})"
        )
    return shard_size


def split(symbols: Sequence[str], shard_size: int) -> list[list[str]]:
    """The symbols, duplicates dropped, in ``ceil(n / shard_size)`` contiguous shards of near-equal size."""
    size = check_shard_size(shard_size)
    unique = list(dict.fromkeys(symbols))
    if not unique:
        raise ConfigError("no symbols to shard; give at least one EXCHANGE:TICKER")
    count = math.ceil(len(unique) / size)
    base, extra = divmod(len(unique), count)
    out, start = [], 0
    for k in range(count):
        end = start + base + (1 if k < extra else 0)
        out.append(unique[start:end])
        start = end
    return out


def start_delay(index: int, spacing_s: float, rng: random.Random) -> float:
    """Shard ``index``'s wait before connecting: ``index * spacing_s`` plus jitter; shard 0 never waits."""
    if index == 0 or spacing_s <= 0:
        return 0.0
    return round(index * spacing_s + rng.uniform(0.0, spacing_s * JITTER_FRACTION), 3)


def plan(
    symbols: Sequence[str],
    shard_size: int = DEFAULT_SHARD_SIZE,
    *,
    spacing_s: float = DEFAULT_CONNECT_SPACING_S,
    max_seconds: float | None = None,
    rng: random.Random | None = None,
) -> list[Shard]:
    """The shards for one run; refuses (ConfigError naming the fix) a plan whose last shard would never stream.

    ``max_seconds`` is each shard's whole budget, start delay included, so every shard of a run ends
    at about the same time and the run stays within it.
    """
    if isinstance(spacing_s, bool) or not isinstance(spacing_s, (int, float)):
        raise ConfigError(f"connect spacing must be a number of seconds, got {spacing_s!r}")
    if not 0 <= spacing_s <= MAX_CONNECT_SPACING_S:
        raise ConfigError(
            f"connect spacing must be from 0 to {MAX_CONNECT_SPACING_S:.0f} s, got {spacing_s!r}; "
            f"set connect_spacing_seconds (default {DEFAULT_CONNECT_SPACING_S:.0f})"
        )
    parts = split(symbols, shard_size)
    count = len(parts)
    latest = (count - 1) * spacing_s + spacing_s * JITTER_FRACTION  # the last shard's longest wait
    if max_seconds is not None and count > 1 and latest >= max_seconds / 2:
        raise ConfigError(
            f"{count} shards of at most {shard_size} symbols, connecting {spacing_s:g} s apart, leave the last "
            f"shard up to {latest:.0f} s of waiting out of a {max_seconds:.0f} s run (more than half of it): "
            f"raise shard_size, lower connect_spacing_seconds or raise max_runtime_minutes"
        )
    rng = rng or random.Random()
    return [Shard(str(k), k, count, tuple(part), start_delay(k, spacing_s, rng)) for k, part in enumerate(parts)]


def wait_to_start(delay_s: float, stop: threading.Event) -> bool:
    """Wait out a shard's start delay; False if ``stop`` was set meanwhile (it wakes the wait at once)."""
    if delay_s <= 0:
        return not stop.is_set()
    return not stop.wait(delay_s)


def record_path(path: str | Path | None, shard: str | None) -> str | None:
    """The shard's own recording file: ``quotes.jsonl`` → ``quotes.shard-3.jsonl``, so no two shards share one."""
    if path is None or shard is None:
        return None if path is None else str(path)
    p = Path(path)
    return str(p.with_name(f"{p.stem}.shard-{shard}{p.suffix}"))
