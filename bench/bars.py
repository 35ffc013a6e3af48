"""Bars on vs off: the producer's quotes/s and RSS at 500 symbols (bars for 50), and a 50 × 300 history fetch.

Alternating rounds in one run, each against a fresh ``serve-feed --synthetic --rate 0`` process and fresh
LogAppendTime topics on the local broker (``make services``):

1. ``quoteflow produce`` with 500 symbols, bars off;
2. the same with ``--bar-resolution 1 --bar-symbols <the first 50>`` (300 history bars each on connect,
   then a ``du`` per live series every second);
3. ``quoteflow bars`` (history only) for 50 symbols × 300 one-minute bars: wall time of the command and
   of the fetch itself (its summary's ``seconds``).

Figures (medians with min-max, ratio on/off) go to bench/results.json section ``bars``.
``BENCH_QUICK=1`` runs each produce measurement for 5 s instead of 10 s.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_section  # noqa: E402
from producer import BOOTSTRAP, QUICK, _env, _peak_rss_mb, _records_in, _start_feed, _stop  # noqa: E402

SYMBOL_COUNT = 500
BAR_SYMBOLS = 50
HISTORY = 300
RUN_SECONDS = 5.0 if QUICK else 10.0
ROUNDS = 3


def _topics(admin, count: int) -> list[str]:
    from confluent_kafka.admin import NewTopic

    names = [f"bench.bars.{uuid.uuid4().hex[:8]}" for _ in range(count)]
    config = {"message.timestamp.type": "LogAppendTime"}
    futures = admin.create_topics([NewTopic(n, 1, 1, config=config) for n in names])
    for future in futures.values():
        future.result(30)
    return names


def _run(args: list[str], feed_url: str) -> tuple[dict, float, float]:
    """One quoteflow command against the feed: its summary, wall seconds, peak RSS (MB)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "quoteflow", "--log-level", "WARNING", *args, "--url", feed_url,
         "--bootstrap", BOOTSTRAP],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _peak_rss_mb(proc.pid) or 0.0)
        time.sleep(0.2)
    wall = time.monotonic() - started
    assert proc.stdout is not None
    return json.loads(proc.stdout.read().strip().splitlines()[-1]), wall, peak


def produce(admin, symbols: list[str], bars: bool) -> dict:
    """``quoteflow produce`` for RUN_SECONDS, bars on (first 50 symbols) or off; quotes/s and peak RSS."""
    feed, url = _start_feed(10)
    quotes, bars_topic, gaps_topic = _topics(admin, 3)
    try:
        args = ["produce", "--symbols", ",".join(symbols), "--topic", quotes, "--max-seconds", str(RUN_SECONDS),
                "--bars-topic", bars_topic, "--gaps-topic", gaps_topic]  # fmt: skip
        if bars:
            args += ["--bar-resolution", "1", "--bar-symbols", ",".join(symbols[:BAR_SYMBOLS])]
            args += ["--history-bars", str(HISTORY)]
        summary, _, peak = _run(args, url)
        if _records_in(quotes) != summary["quotes"]:
            raise RuntimeError(f"quotes topic holds {_records_in(quotes)}, the producer reported {summary['quotes']}")
        in_bars = _records_in(bars_topic)
        if bars and in_bars != summary["bars"]:
            raise RuntimeError(f"bars topic holds {in_bars}, the producer reported {summary['bars']}")
    finally:
        _stop(feed)
        admin.delete_topics([quotes, bars_topic, gaps_topic])
    return {
        "quotes_per_s": round(summary["quotes"] / summary["seconds"], 1),
        "peak_rss_mb": round(peak, 1),
        "bars": summary.get("bars", 0),
        "reconnects": summary["reconnects"],
    }


def history(admin, symbols: list[str]) -> dict:
    """``quoteflow bars`` for 50 symbols × 300 bars: command wall time and fetch time."""
    feed, url = _start_feed(10)
    (bars_topic,) = _topics(admin, 1)
    try:
        summary, wall, peak = _run(
            ["bars", "--symbols", ",".join(symbols[:BAR_SYMBOLS]), "--count", str(HISTORY), "--bars-topic", bars_topic],
            url,
        )
        if summary.get("stopped_by") != "history_complete":
            raise RuntimeError(f"history fetch did not complete: {summary}")
        history_bars = summary["bars_by_origin"].get("history", 0)
        if _records_in(bars_topic) != summary["bars"] or history_bars != BAR_SYMBOLS * HISTORY:
            raise RuntimeError(f"expected {BAR_SYMBOLS * HISTORY} history bars, got {summary}")
    finally:
        _stop(feed)
        admin.delete_topics([bars_topic])
    return {"wall_s": round(wall, 2), "fetch_s": summary["seconds"], "bars": summary["bars"], "peak_rss_mb": peak}


def _stats(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def main() -> None:
    from confluent_kafka.admin import AdminClient

    from quoteflow.tradingview.feed.synthetic import synthetic_universe

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    symbols = synthetic_universe(SYMBOL_COUNT)
    off: list[dict] = []
    on: list[dict] = []
    fetch: list[dict] = []
    for round_no in range(ROUNDS):
        # Alternate the order too, so a drift over the run does not favour one side.
        for bars in (False, True) if round_no % 2 == 0 else (True, False):
            (on if bars else off).append(produce(admin, symbols, bars))
        fetch.append(history(admin, symbols))
        print(f"round {round_no + 1}: off {off[-1]}, on {on[-1]}, history {fetch[-1]}", file=sys.stderr)
    ratios = [b["quotes_per_s"] / a["quotes_per_s"] for a, b in zip(off, on, strict=True)]
    figures = {
        "symbols": SYMBOL_COUNT,
        "bar_symbols": BAR_SYMBOLS,
        "rounds": ROUNDS,
        "run_seconds": RUN_SECONDS,
        "bars_off": {
            "quotes_per_s": _stats([r["quotes_per_s"] for r in off]),
            "peak_rss_mb": _stats([r["peak_rss_mb"] for r in off]),
        },
        "bars_on": {
            "quotes_per_s": _stats([r["quotes_per_s"] for r in on]),
            "peak_rss_mb": _stats([r["peak_rss_mb"] for r in on]),
            "bars_delivered": _stats([r["bars"] for r in on]),
        },
        "quotes_per_s_ratio_on_off": _stats(ratios),
        "history_fetch_50x300": {
            "wall_s": _stats([r["wall_s"] for r in fetch]),
            "fetch_s": _stats([r["fetch_s"] for r in fetch]),
            "bars": fetch[0]["bars"],
        },
    }
    write_section("bars", figures)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
