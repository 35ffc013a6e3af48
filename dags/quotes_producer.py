"""
### quotes_producer — TradingView websocket → Kafka, as one long supervised task

`schedule="@continuous"` with `max_active_runs=1`: exactly one run at a time, and the next run
starts as soon as the previous one ends. Each run holds **one task** that streams quotes for
`max_runtime_minutes` and then exits cleanly (Kafka flushed, socket closed), so no run lives long
enough to meet the Execution-API token expiry (the project also raises
`AIRFLOW__EXECUTION_API__JWT_EXPIRATION_TIME`).

Inside the run the client echoes heartbeats, merges partial `qsd` updates into per-symbol
snapshots and produces a Quote (key = symbol, header `schema: quote.v1`) only when one changed;
dead links are caught by a 30 s watchdog and re-established with capped, jittered backoff. A
stats line is logged every 30 s (quotes/s, reconnects, last-tick age per symbol); the run's
summary (quotes delivered, packets, heartbeats, reconnects, malformed packets, errors by kind) is
returned to XCom.

**Stopping.** Marking the task failed, clearing it, or stopping the worker sends SIGTERM, on which
Airflow calls `on_kill` only: it sets the stop flag, and the loop flushes Kafka and returns
within 5 s. A failure (e.g. undelivered records) is retried with exponential backoff; a configuration
error (a missing connection or topic, the auth token bound for a foreign host, every symbol refused)
fails the task once, without retries, with a message that says what to fix.

**Configuration.** Connection `kafka_default` (extra = librdkafka settings, at least
`bootstrap.servers`); optional `tradingview_default` (password = a user's auth token, never
logged; extra = `headers` for the handshake and client tunables such as `watchdog_timeout`).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from _shared.connections import connection_info
from _shared.params import topic_param
from _shared.tasks import config_errors_fail, pipeline
from airflow.sdk import BaseOperator, Param, dag

from quoteflow.settings import BARS_TOPIC, GAPS_TOPIC, KAFKA_CONN_ID, TRADINGVIEW_CONN_ID


class QuotesProducerOperator(BaseOperator):
    """Run the TradingView → Kafka loop for the run's ``max_runtime_minutes``; ``on_kill`` stops it cleanly."""

    ui_color = "#d6eaf8"

    def __init__(
        self,
        *,
        kafka_conn_id: str = KAFKA_CONN_ID,
        tradingview_conn_id: str = TRADINGVIEW_CONN_ID,
        stats_interval_s: float = 30.0,
        flush_timeout_s: float = 4.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.kafka_conn_id = kafka_conn_id
        self.tradingview_conn_id = tradingview_conn_id
        self.stats_interval_s = stats_interval_s
        self.flush_timeout_s = flush_timeout_s
        self._stop: threading.Event | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        """Stream until the time limit or a stop request; the summary goes to XCom."""
        from quoteflow import jobs

        params = context["params"]
        if self._stop is None:
            self._stop = threading.Event()
        # Retrying cannot fix configuration (a missing topic, a token for a foreign host, or every
        # symbol refused by TradingView, which is NoValidSymbols): fail this try, no retries.
        with config_errors_fail():
            return jobs.produce(
                pipeline(params, elasticsearch=False, kafka_conn_id=self.kafka_conn_id),
                url=params["url"],
                symbols=params["symbols"],
                tradingview=connection_info(self.tradingview_conn_id, required=False),
                max_seconds=float(params["max_runtime_minutes"]) * 60.0,
                bar_resolutions=params.get("bar_resolutions", []),
                bar_symbols=_bar_symbols(params.get("bar_symbols"), params["symbols"]),
                history_bars=int(params.get("history_bars", 300)),
                stats_interval=self.stats_interval_s,
                flush_timeout=self.flush_timeout_s,
                stop=self._stop,
            )

    def on_kill(self) -> None:
        """Airflow's SIGTERM handler calls only this: ask the loop to flush and return."""
        if self._stop is None:
            self._stop = threading.Event()
        self._stop.set()
        self.log.info("stop requested: flushing Kafka and closing the websocket")


def _bar_symbols(wanted: list[str] | None, symbols: list[str]) -> list[str] | None:
    """The bar symbols of this shard: all of them when ``wanted`` is empty, else those of ``wanted`` it streams."""
    if not wanted:
        return None
    return [s for s in symbols if s in set(wanted)]


@dag(
    dag_id="quotes_producer",
    schedule="@continuous",
    start_date=datetime(2026, 11, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["quoteflow", "producer"],
    doc_md=__doc__,
    default_args={
        "retries": 5,
        "retry_delay": timedelta(seconds=15),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
    },
    params={
        "symbols": Param(
            ["BINANCE:SOLUSDT", "BINANCE:BTCUSDT", "BINANCE:ETHUSDT"],
            type="array",
            items={"type": "string", "pattern": "^(=.+|[^:\\s]+:[^:\\s]+)$"},
            minItems=1,
            title="Symbols",
            description="TradingView keys, EXCHANGE:TICKER (or the =JSON spec form); one Kafka key each.",
        ),
        "max_runtime_minutes": Param(
            60,
            type="number",
            exclusiveMinimum=0,
            maximum=24 * 60,
            title="Max runtime (minutes)",
            description="The task exits cleanly after this long and the next continuous run takes over.",
        ),
        "topic": topic_param("The Kafka topic quotes are written to (key = symbol)."),
        "bar_resolutions": Param(
            ["1"],
            type="array",
            items={"type": "string", "pattern": "^([0-9]{1,4}[SDWM]?|[DWM])$"},
            title="Bar resolutions",
            description=(
                "Chart sessions per symbol at these resolutions (1 = one-minute bars, 5, 60, 1D ...): Bar records "
                "to bars.tradingview, feed gaps to gaps.tradingview. Empty = bars off (quotes only)."
            ),
        ),
        "history_bars": Param(
            300,
            type="integer",
            minimum=1,
            maximum=10_000,
            title="History bars on every connect",
            description="Bars asked for on every (re)connect, so the chart is full at once; more after a long gap.",
        ),
        "bars_topic": Param(
            BARS_TOPIC,
            type="string",
            title="Bars topic",
            description="Kafka topic of the Bar records (key = symbol|resolution); empty = bars off.",
        ),
        "gaps_topic": Param(
            GAPS_TOPIC,
            type="string",
            title="Gaps topic",
            description="Kafka topic of the feed-gap events (disconnect, stall, handover); empty = not written.",
        ),
        "bar_symbols": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Bar symbols",
            description="Stream bars for these of the symbols only; empty = every symbol.",
        ),
        "url": Param(
            "wss://data.tradingview.com/socket.io/websocket",
            type="string",
            pattern="^wss?://",
            title="Websocket URL",
            description="TradingView's data socket, or a local feed (python -m quoteflow serve-feed).",
        ),
    },
)
def quotes_producer():
    QuotesProducerOperator(task_id="produce_quotes")


quotes_producer()
