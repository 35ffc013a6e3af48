"""Bulk writes: chunks bounded by count and bytes, retries with capped full-jitter backoff inside a time budget.

Whole requests are retried on connection errors, timeouts and 429/502/503/504; inside a 200
response, only the items that came back 429 (or 5xx) are re-sent — never the whole chunk, and
never with ``raise_on_error`` semantics that would drop them (see the anchors on
``streaming_bulk``). A 400 for an item (strict mapping, unparsable value) is a *rejection*: it is
returned to the caller, who dead-letters it. A 409 ``version_conflict_engine_exception`` (a bar
written with its offset as external version, older than the bar already indexed) is *stale*: done,
counted, never an error or a dead letter. Anything else is fatal for the window. When the
budget is spent the chunk raises :class:`ElasticsearchUnavailable`; because ids are
deterministic, re-running the window later duplicates nothing.

Up to ``in_flight`` chunks are sent from worker threads while the caller prepares the next one
(the HTTP wait releases the GIL), so Kafka reading and document building overlap with indexing.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503, 504})
VERSION_CONFLICT = "version_conflict_engine_exception"
FILTER_PATH = "errors,items.*.status,items.*.error.type,items.*.error.reason"
DEFAULT_CHUNK_DOCS = 2000
DEFAULT_CHUNK_BYTES = 5 * 1024 * 1024


class BulkError(RuntimeError):
    """Base of the bulk writer's errors."""


class ElasticsearchUnavailable(BulkError):
    """Elasticsearch stayed unreachable or overloaded for the whole retry budget."""


class BulkItemError(BulkError):
    """Elasticsearch refused an item for a reason that is neither transient nor the document's fault."""


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, bounded by a total time budget per chunk."""

    initial_backoff_s: float = 0.2
    max_backoff_s: float = 10.0
    budget_s: float = 120.0

    def __post_init__(self) -> None:
        if self.initial_backoff_s <= 0 or self.max_backoff_s < self.initial_backoff_s or self.budget_s <= 0:
            raise ValueError(f"invalid retry policy {self}: need 0 < initial <= max and budget > 0")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry ``attempt`` (1-based): ``uniform(0, min(max, initial * 2**(attempt-1)))``."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * (2 ** min(attempt - 1, 30)))
        return rng.uniform(0, cap)


@dataclass(slots=True)
class BulkItem:
    """One record ready to index: its NDJSON lines and where it came from (for dead-lettering)."""

    lines: bytes
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None
    timestamp_ms: int = 0


@dataclass(frozen=True)
class Rejection:
    """An item Elasticsearch refused because of the document itself (to dead-letter as ``mapping``)."""

    item: BulkItem
    reason: str
    detail: str


@dataclass
class BulkStats:
    """Running totals of a writer."""

    indexed: int = 0
    requests: int = 0
    retries: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    # Versioned writes older than the document in place (409): done, not indexed; per topic.
    stale: dict[str, int] = field(default_factory=dict)


class BulkWriter:
    """Buffers items into chunks and indexes them; call :meth:`flush` and read :attr:`stats` at the end."""

    def __init__(
        self,
        es: Any,
        *,
        chunk_docs: int = DEFAULT_CHUNK_DOCS,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        in_flight: int = 2,
        retry: RetryPolicy | None = None,
        request_timeout_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        if chunk_docs < 1 or chunk_bytes < 1024 or in_flight < 1:
            raise ValueError("chunk_docs >= 1, chunk_bytes >= 1024 and in_flight >= 1 are required")
        # The transport must not retry on its own: it would re-send whole bodies with no jitter or budget.
        self._es = es.options(max_retries=0, retry_on_timeout=False, request_timeout=request_timeout_s)
        self.chunk_docs = chunk_docs
        self.chunk_bytes = chunk_bytes
        self.in_flight = in_flight
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._buffer: list[BulkItem] = []
        self._buffer_bytes = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[None]] = deque()
        self.stats = BulkStats()

    def add(self, item: BulkItem) -> None:
        """Buffer one item; sends a chunk when the count or byte bound is reached."""
        if self._buffer and self._buffer_bytes + len(item.lines) > self.chunk_bytes:
            self._submit()
        self._buffer.append(item)
        self._buffer_bytes += len(item.lines)
        if len(self._buffer) >= self.chunk_docs:
            self._submit()

    def flush(self) -> BulkStats:
        """Send what is buffered and wait for every chunk; raise the first chunk error."""
        if self._buffer:
            self._submit()
        self._drain(0)
        return self.stats

    def close(self) -> None:
        """Stop the sender threads (waits for chunks already sent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> BulkWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _submit(self) -> None:
        chunk, self._buffer, self._buffer_bytes = self._buffer, [], 0
        self._drain(self.in_flight - 1)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix="bulk")
        self._pending.append(self._pool.submit(self._send_chunk, chunk))

    def _drain(self, keep: int) -> None:
        first: BaseException | None = None
        while len(self._pending) > keep or (first is not None and self._pending):
            future = self._pending.popleft()
            try:
                future.result()
            except BulkError as exc:  # keep waiting for the others, then raise the first
                if first is None:
                    first = exc
                else:
                    logger.warning("further bulk chunk failed after the first error: %s", exc)
        if first is not None:
            raise first

    def _send_chunk(self, items: list[BulkItem]) -> None:
        """Index one chunk to completion (retrying what is transient) or raise."""
        from elastic_transport import ConnectionError as TransportConnectionError
        from elastic_transport import ConnectionTimeout
        from elasticsearch import ApiError

        deadline = time.monotonic() + self.retry.budget_s
        todo = items
        attempt = 0
        last_problem = ""
        while todo:
            body = b"".join(item.lines for item in todo)
            retry_items: list[BulkItem] = []
            try:
                with self._lock:
                    self.stats.requests += 1
                response = self._es.bulk(operations=body, filter_path=FILTER_PATH)
            except (TransportConnectionError, ConnectionTimeout) as exc:
                last_problem = f"{type(exc).__name__}: {exc}"
                retry_items = todo
            except ApiError as exc:
                if exc.status_code not in RETRY_STATUSES:
                    raise BulkItemError(f"bulk request refused with HTTP {exc.status_code}: {exc}") from exc
                last_problem = f"HTTP {exc.status_code} for the whole request"
                retry_items = todo
            else:
                indexed, rejected, retry_items, last_problem, stale = self._sort_items(todo, response)
                with self._lock:
                    self.stats.indexed += indexed
                    self.stats.rejections.extend(rejected)
                    for topic in stale:
                        self.stats.stale[topic] = self.stats.stale.get(topic, 0) + 1
            if not retry_items:
                return
            attempt += 1
            with self._lock:
                self.stats.retries += len(retry_items)
            delay = self.retry.delay(attempt, self._rng)
            if time.monotonic() + delay > deadline:
                raise ElasticsearchUnavailable(
                    f"{len(retry_items)} document(s) still not indexed after {attempt} attempt(s) within the "
                    f"{self.retry.budget_s:.0f}s retry budget; last problem: {last_problem}"
                )
            self._sleep(delay)
            todo = retry_items

    @staticmethod
    def _sort_items(todo: list[BulkItem], response: Any) -> tuple[int, list[Rejection], list[BulkItem], str, list[str]]:
        body = response.body if hasattr(response, "body") else response
        if not body.get("errors"):
            return len(todo), [], [], "", []
        results = body.get("items") or []
        if len(results) != len(todo):
            raise BulkItemError(f"bulk response has {len(results)} items for {len(todo)} sent")
        indexed = 0
        rejected: list[Rejection] = []
        retry_items: list[BulkItem] = []
        stale: list[str] = []
        problem = ""
        for item, result in zip(todo, results, strict=True):
            outcome = next(iter(result.values()))
            status = int(outcome.get("status", 0))
            if 200 <= status < 300:
                indexed += 1
                continue
            error = outcome.get("error") or {}
            detail = f"{error.get('type', '?')}: {error.get('reason', '')}"
            if status == 409 and error.get("type") == VERSION_CONFLICT:
                stale.append(item.topic)  # an older offset of a versioned document: the newer one stays
            elif status in RETRY_STATUSES or status >= 500:
                retry_items.append(item)
                problem = f"HTTP {status} for items ({detail})"
            elif status == 400:
                rejected.append(Rejection(item, "mapping", detail))
            else:
                raise BulkItemError(
                    f"{item.topic}-{item.partition}-{item.offset} refused with HTTP {status} ({detail}); "
                    "not transient and not the document's fault — check the cluster (blocks, missing index, auth)"
                )
        return indexed, rejected, retry_items, problem, stale
