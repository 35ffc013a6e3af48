"""How the local feed behaves: :class:`FeedConfig`, checked when it is made."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quoteflow.tradingview.session import ANONYMOUS_TOKEN


class FeedServerError(Exception):
    """The feed server cannot start with the given settings."""


@dataclass
class FeedConfig:
    """How the local feed behaves; every interval is settable so tests run in seconds."""

    host: str = "127.0.0.1"
    port: int = 0
    replay: str | Path | None = None
    speed: float = 1.0
    loop: bool = False
    synthetic_symbols: int = 0
    rate: float = 100.0
    packets_per_message: int = 10
    tokens: tuple[str, ...] = (ANONYMOUS_TOKEN,)
    heartbeat_interval: float = 10.0
    heartbeat_timeout: float = 30.0
    drop_after: int | None = None
    stall_after: int | None = None
    garbage_every: int | None = None
    bad_length_every: int | None = None
    fault_connections: int | None = None
    handshake_status: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if (self.replay is None) == (self.synthetic_symbols <= 0):
            raise FeedServerError("choose exactly one feed: a replay file, or synthetic_symbols > 0")
        if self.replay is not None and not Path(self.replay).is_file():
            raise FeedServerError(f"replay file {self.replay} does not exist")
        if self.rate < 0 or self.speed < 0 or self.packets_per_message < 1:
            raise FeedServerError("rate and speed must be >= 0 and packets_per_message >= 1")
        if self.heartbeat_interval <= 0 or self.heartbeat_timeout <= 0:
            raise FeedServerError("heartbeat_interval and heartbeat_timeout must be > 0")
