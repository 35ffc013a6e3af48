"""
### quotes_producer — TradingView websocket → Kafka, as one long supervised task

`schedule="@continuous"` with `max_active_runs=1`: exactly one run at a time, and the next run
starts as soon as the previous one ends. Each run splits `symbols` into shards of at most
`shard_size` (`plan_shards`) and maps **one long task per shard** (`produce_quotes`, map index =
shard id), each with its own websocket, watchdog, backoff, stats and summary. Shard k connects
`k × connect_spacing_seconds` (plus jitter) after its task starts, so the shards of a run, or all
of them retrying at once, never hit TradingView's handshake limit (HTTP 429) in one burst. Each
shard streams for `max_runtime_minutes` (its start delay included) and then exits cleanly (Kafka
flushed, socket closed), so no run lives long enough to meet the Execution-API token expiry (the
project also raises `AIRFLOW__EXECUTION_API__JWT_EXPIRATION_TIME`).

**A failing shard** retries alone (retries are per mapped task instance); the other shards keep
streaming. If it exhausts its retries (or fails on configuration), the run is marked failed only
when every shard has ended: the healthy shards stream until their `max_runtime_minutes`, then
the next continuous run starts every shard again, the failed one included.

Inside the run the client echoes heartbeats, merges partial `qsd` updates into per-symbol
snapshots and produces a Quote (key = symbol, header `schema: quote.v1`) only when one changed;
dead links are caught by a 30 s watchdog and re-established with capped, jittered backoff. A
stats line is logged every 30 s (quotes/s, reconnects, last-tick age per symbol) and its figures
are pushed to XCom `stats` (the live view's per-shard health); the shard's summary (quotes
delivered, packets, heartbeats, reconnects, malformed packets, errors by kind) is returned to
XCom. Both carry `shard` and `symbols`.

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
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from _shared.connections import connection_info
from _shared.params import bars_topic_param, gaps_topic_param, topic_param
from _shared.tasks import config_errors_fail, pipeline
from airflow.sdk import BaseOperator, Param, dag, task

from quoteflow.settings import KAFKA_CONN_ID, TRADINGVIEW_CONN_ID
from quoteflow.shards import DEFAULT_CONNECT_SPACING_S, DEFAULT_SHARD_SIZE, MAX_CONNECT_SPACING_S, MAX_SHARD_SIZE


class QuotesProducerOperator(BaseOperator):
    """Stream one shard (or all symbols) TradingView → Kafka for ``max_runtime_minutes``; ``on_kill`` stops it.

    ``shard`` is one element of ``plan_shards``' list (``shard``, ``symbols``, ``start_delay_s``); without it
    the task streams the ``symbols`` Param on one connection.
    """

    ui_color = "#d6eaf8"

    def __init__(
        self,
        *,
        kafka_conn_id: str = KAFKA_CONN_ID,
        tradingview_conn_id: str = TRADINGVIEW_CONN_ID,
        stats_interval_s: float = 30.0,
        flush_timeout_s: float = 4.0,
        shard: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.shard = shard
        self.kafka_conn_id = kafka_conn_id
        self.tradingview_conn_id = tradingview_conn_id
        self.stats_interval_s = stats_interval_s
        self.flush_timeout_s = flush_timeout_s
        self._stop: threading.Event | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        """Stream until the time limit or a stop request; the summary goes to XCom."""
        from quoteflow import jobs

        params = context["params"]
        shard = self.shard or {}
        if self._stop is None:
            self._stop = threading.Event()
        # Retrying cannot fix configuration (a missing topic, a token for a foreign host, or every
        # symbol refused by TradingView, which is NoValidSymbols): fail this try, no retries.
        with config_errors_fail():
            return jobs.produce(
                pipeline(params, elasticsearch=False, kafka_conn_id=self.kafka_conn_id),
                url=params["url"],
                symbols=shard.get("symbols", params["symbols"]),
                shard=shard.get("shard"),
                start_delay_s=float(shard.get("start_delay_s", 0.0)),
                tradingview=connection_info(self.tradingview_conn_id, required=False),
                max_seconds=float(params["max_runtime_minutes"]) * 60.0,
                bar_resolutions=params.get("bar_resolutions", []),
                bar_symbols=_bar_symbols(params.get("bar_symbols"), shard.get("symbols", params["symbols"])),
                history_bars=int(params.get("history_bars", 300)),
                stats_interval=self.stats_interval_s,
                flush_timeout=self.flush_timeout_s,
                stop=self._stop,
                on_stats=lambda stats: self._push_stats(context, stats),
            )

    def _push_stats(self, context: Any, stats: dict[str, Any]) -> None:
        """The shard's latest stats to XCom ``stats``, where the live view's health section reads them.

        Pushed from the task's own thread (the client loop), the one that talks to the supervisor.
        """
        context["ti"].xcom_push(key="stats", value=stats)

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
        "shard_size": Param(
            DEFAULT_SHARD_SIZE,
            type="integer",
            minimum=1,
            maximum=MAX_SHARD_SIZE,
            title="Symbols per websocket (shard size)",
            description=(
                "At most this many symbols share one websocket; one mapped produce_quotes task per shard. "
                "TradingView records no per-connection cap; 500 keeps each reconnect's snapshot burst and "
                "the symbols one dropped socket takes down small, while 5,000 symbols need only 10 handshakes."
            ),
        ),
        "connect_spacing_seconds": Param(
            DEFAULT_CONNECT_SPACING_S,
            type="number",
            minimum=0,
            maximum=MAX_CONNECT_SPACING_S,
            title="Seconds between shard connects",
            description=(
                "Shard k opens its websocket k times this long (plus up to half of it as jitter) after its "
                "task starts, so N shards do not trip TradingView's handshake rate limit (HTTP 429)."
            ),
        ),
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
        "bars_topic": bars_topic_param("Kafka topic of the Bar records (key = symbol|resolution); empty = bars off."),
        "gaps_topic": gaps_topic_param(
            "Kafka topic of the feed-gap events (disconnect, stall, handover); empty = not written."
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
    @task
    def plan_shards(params=None) -> list[dict[str, Any]]:
        """The run's shards from its Params: ids, symbols and start delays (refused plans name the fix)."""
        from quoteflow import shards

        assert params is not None
        with config_errors_fail():
            plan = shards.plan(
                params["symbols"],
                params["shard_size"],
                spacing_s=float(params["connect_spacing_seconds"]),
                max_seconds=float(params["max_runtime_minutes"]) * 60.0,
            )
        return [s.as_dict() for s in plan]

    QuotesProducerOperator.partial(
        task_id="produce_quotes", map_index_template="shard {{ task.shard['shard'] }}"
    ).expand(shard=plan_shards())


quotes_producer()
