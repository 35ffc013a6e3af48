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
    # Feed-wide faults: outages ((after_s, duration_s) real seconds after start), a runtime control file,
    # TradingView's handshake rate limit (n upgrades per seconds, beyond: 429), chart-only symbol errors,
    # resolutions answered resolution_not_entitled.
    outages: tuple[tuple[float, float], ...] = ()
    control_file: str | Path | None = None
    handshake_limit: tuple[int, float] | None = None
    symbol_errors: tuple[str, ...] = ()
    not_entitled: tuple[str, ...] = ()
    # Charts: how often (real s) forming bars are checked for a du; feed time = start + clock_speed x elapsed.
    du_interval: float = 1.0
    clock_speed: float = 1.0

    def __post_init__(self) -> None:
        if (self.replay is None) == (self.synthetic_symbols <= 0):
            raise FeedServerError("choose exactly one feed: a replay file, or synthetic_symbols > 0")
        if self.replay is not None and not Path(self.replay).is_file():
            raise FeedServerError(f"replay file {self.replay} does not exist")
        if self.rate < 0 or self.speed < 0 or self.packets_per_message < 1:
            raise FeedServerError("rate and speed must be >= 0 and packets_per_message >= 1")
        if self.heartbeat_interval <= 0 or self.heartbeat_timeout <= 0:
            raise FeedServerError("heartbeat_interval and heartbeat_timeout must be > 0")
        for after, duration in self.outages:
            if after < 0 or duration <= 0:
                raise FeedServerError(f"outage {after}:{duration}: after_s must be >= 0 and duration_s > 0")
        if self.handshake_limit is not None and (self.handshake_limit[0] < 1 or self.handshake_limit[1] <= 0):
            raise FeedServerError("handshake_limit n/seconds: n must be >= 1 and seconds > 0 (e.g. 5/10)")
        if self.du_interval <= 0 or self.clock_speed <= 0:
            raise FeedServerError("du_interval and clock_speed must be > 0")


def parse_fault(text: str) -> dict[str, object]:
    """One ``--fault`` value as FeedConfig fields: ``outage:<after_s>:<duration_s>``, ``symbol-error:<SYMBOL>``,
    ``not-entitled:<RES>[,<RES>]``."""
    kind, _, rest = text.partition(":")
    if kind == "outage":
        parts = rest.split(":")
        try:
            after, duration = (float(x) for x in parts)
        except ValueError:
            raise FeedServerError(f"--fault {text}: write outage:<after_s>:<duration_s>, e.g. outage:60:150") from None
        return {"outages": ((after, duration),)}
    if kind == "symbol-error" and rest:
        return {"symbol_errors": (rest,)}
    if kind == "not-entitled" and rest:
        return {"not_entitled": tuple(r for r in rest.split(",") if r)}
    raise FeedServerError(
        f"--fault {text}: unknown fault; use outage:<after_s>:<duration_s>, symbol-error:<SYMBOL> or not-entitled:<RES>"
    )


def parse_handshake_limit(text: str) -> tuple[int, float]:
    """``<n>/<seconds>`` → (n, seconds)."""
    n, _, seconds = text.partition("/")
    try:
        return int(n), float(seconds)
    except ValueError:
        raise FeedServerError(f"--handshake-limit {text}: write <n>/<seconds>, e.g. 5/10") from None
