"""CPU time of the two hot paths alone, in one process, for A/B runs on a busy machine.

- **client**: ``TradingViewClient._on_message`` over synthetic 50-packet ``qsd`` messages for 500
  symbols, each changed snapshot turned into its Kafka value (``SymbolState.to_json``), as the
  producer does; no socket, no Kafka.
- **indexer**: ``bulk_lines`` (validate + document + action line) over Quote values.

CPU time (``time.process_time``) is what the code costs; the wall-clock benches (``producer.py``,
``indexer.py``) swing with whatever else the machine runs. Each path is timed ``REPEATS`` times and
the best kept (noise only ever adds time, as with ``timeit``). Prints one JSON line:
``{"client_us_per_quote": …, "indexer_us_per_record": …}``; ``bench/_ab.py`` runs it against the
library on ``PYTHONPATH``, alternating two commits' code.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time

from quoteflow.elastic.documents import bulk_lines
from quoteflow.quotes import Quote, format_timestamp
from quoteflow.tradingview.client import ClientConfig, TradingViewClient
from quoteflow.tradingview.protocol import encode_packet

SYMBOLS = [f"BINANCE:C{i:03d}USDT" for i in range(500)]
MESSAGES = 1_000
PACKETS_PER_MESSAGE = 50
RECORDS = 50_000
REPEATS = 5
_QS = "qs_placeholder0"  # as long as a real session id (qs_ + 12), so the length prefixes stay true


def _qsd_messages() -> list[bytes]:
    """Synthetic 50-packet qsd messages addressed to the session ``_QS``."""
    rng = random.Random(1)
    qs = _QS
    messages = []
    for m in range(MESSAGES):
        packets = []
        for p in range(PACKETS_PER_MESSAGE):
            n = m * PACKETS_PER_MESSAGE + p
            price = round(100 + rng.random(), 4)
            values: dict[str, object] = {"lp": price, "volume": float(n), "ch": round(price - 100, 4)}
            if n % 3 == 0:
                values.update(bid=price - 0.01, ask=price + 0.01, bid_size=5)
            if n % 5 == 0:
                values.update(lp_time=1_764_300_000 + n, chp=0.1)
            if n < len(SYMBOLS):
                values.update(currency_code="USDT", update_mode="streaming", high_price=1e100)
            packets.append(encode_packet("qsd", [qs, {"n": SYMBOLS[n % len(SYMBOLS)], "s": "ok", "v": values}]))
        messages.append("".join(packets).encode())
    return messages


def client_us_per_quote(template: list[bytes]) -> float:
    """µs of CPU per emitted quote through ``_on_message`` (+ ``to_json``), like the producer's loop."""
    out: list[bytes] = []
    client = TradingViewClient(
        ClientConfig(url="ws://127.0.0.1:1/socket.io/websocket", symbols=SYMBOLS),
        lambda state, at: out.append(state.to_json(at)),
    )
    session = client.session.session_id.encode()
    messages = [m.replace(_QS.encode(), session) for m in template]  # a fresh client: every snapshot is new
    on_message = client._on_message
    started = time.process_time()
    for data in messages:
        on_message(data, time.monotonic())
    seconds = time.process_time() - started
    return seconds / len(out) * 1e6


def quote_values() -> list[bytes]:
    """Kafka values of Quote records, half with an event_time."""
    received = format_timestamp(1_764_300_000.25, milliseconds=True)
    return [
        Quote(
            symbol=(s := SYMBOLS[i % 50]), exchange="BINANCE", ticker=s.split(":")[1], price=100.0 + i % 997,
            change=0.5, change_percent=0.1, volume=float(i), bid=99.9, ask=100.1, currency="USDT",
            update_mode="streaming", received_at=received, event_time="2026-11-28T03:00:00Z" if i % 2 else None,
        ).to_json()
        for i in range(RECORDS)
    ]  # fmt: skip


def indexer_us_per_record(values: list[bytes]) -> float:
    """µs of CPU per record through ``bulk_lines``, the indexer's per-record work."""
    started = time.process_time()
    for offset, value in enumerate(values):
        bulk_lines(value, "quotes.tradingview", offset % 3, offset, 1_764_300_000_250, "quotes-")
    return (time.process_time() - started) / len(values) * 1e6


def main() -> int:
    messages, values = _qsd_messages(), quote_values()
    client = min(client_us_per_quote(messages) for _ in range(REPEATS))
    indexer = min(indexer_us_per_record(values) for _ in range(REPEATS))
    print(json.dumps({"client_us_per_quote": round(client, 4), "indexer_us_per_record": round(indexer, 4)}))
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench-hotpaths"
    sys.exit(main())
