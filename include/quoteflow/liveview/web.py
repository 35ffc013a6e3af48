"""The live view's HTTP app: the page, its static assets and JSON endpoints, as a FastAPI app.

Authentication and authorisation are not decided here: the caller passes ``dependencies`` that every
route runs (the Airflow plugin passes its "may read the pipeline's DAGs" check). Static files are served
by an explicit route rather than a ``StaticFiles`` mount because app-level dependencies do not cover
mounts, and FastAPI's own ``/openapi.json``, ``/docs`` and ``/redoc`` are off: they would answer anyone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

from confluent_kafka import KafkaException
from elastic_transport import TransportError
from elasticsearch import ApiError
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse

from quoteflow.liveview.bars_view import BASE_RESOLUTION
from quoteflow.liveview.kafka_view import KafkaViewError
from quoteflow.liveview.service import BackendUnavailable, LiveNames, LiveView, candle_range, parse_range
from quoteflow.settings import ConfigError

logger = logging.getLogger(__name__)

STATIC_FILES = {
    "app.js": "application/javascript",
    "app.css": "text/css",
    "vendor/uPlot.iife.min.js": "application/javascript",
    "vendor/uPlot.min.css": "text/css",
    "vendor/lightweight-charts.standalone.production.js": "application/javascript",
}
# Kafka or Elasticsearch down or busy: the page says so and retries; nothing is wrong with the request.
UNAVAILABLE = (KafkaViewError, KafkaException, TransportError, ApiError)
NO_STORE = {"Cache-Control": "no-store"}
SymbolsQuery = Annotated[list[str] | None, Query(alias="symbol")]


def create_app(
    view: Callable[[], tuple[LiveView, LiveNames]],
    static_dir: Path,
    *,
    dependencies: Sequence[Any] = (),
    pipeline_state: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """A FastAPI app for the view; ``view()`` returns the (cached) :class:`LiveView` and the names it watches."""
    app = FastAPI(
        title="quoteflow live quotes",
        dependencies=list(dependencies),
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )

    def _call(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except BackendUnavailable as exc:  # already logged once per outage
            retry = str(max(1, math.ceil(exc.retry_after_s)))
            raise HTTPException(status_code=503, detail=str(exc), headers={"Retry-After": retry, **NO_STORE}) from None
        except UNAVAILABLE as exc:
            logger.warning("quotes view: a backend did not answer: %s", exc)
            raise HTTPException(status_code=503, detail=f"{exc.__class__.__name__}: {exc}") from None
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise HTTPException(status_code=503, detail=str(exc)) from None
            raise HTTPException(status_code=422, detail=str(exc)) from None

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(static_dir / "index.html", media_type="text/html", headers=NO_STORE)

    @app.get("/static/{name:path}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        media = STATIC_FILES.get(name)
        path = static_dir / name
        if media is None:
            raise HTTPException(status_code=404, detail=f"no static file {name!r}")
        if not path.is_file():
            logger.error("quotes view asset %s is missing; build it with `npm ci` in %s", path, static_dir.parent)
            raise HTTPException(status_code=500, detail=f"{name} is not built; run `npm ci` in {static_dir.parent}")
        return FileResponse(path, media_type=media)

    @app.get("/api/symbols")
    def symbols() -> dict[str, Any]:
        live, names = _call(view)  # a connection it cannot use is a 503 naming the fix
        return {"symbols": _call(lambda: live.symbols(names)), "default": list(names.symbols)}

    @app.get("/api/chart")
    def chart(symbol: str, range: str = "15m") -> dict[str, Any]:
        live, names = _call(view)  # a connection it cannot use is a 503 naming the fix
        return _call(lambda: live.chart(names, symbol, parse_range(range)))

    @app.get("/api/candles")
    def candles(symbol: str, resolution: str = BASE_RESOLUTION, range: str | None = None) -> dict[str, Any]:
        live, names = _call(view)  # a connection it cannot use is a 503 naming the fix
        return _call(lambda: live.candles(names, symbol, resolution, candle_range(resolution, range)))

    @app.get("/api/latest")
    def latest(symbols: SymbolsQuery = None) -> dict[str, Any]:
        live, names = _call(view)  # a connection it cannot use is a 503 naming the fix
        wanted = symbols or list(names.symbols)
        return {"latest": _call(lambda: live.latest(names, wanted))}

    @app.get("/api/health")
    def health(symbols: SymbolsQuery = None) -> dict[str, Any]:
        live, names = _call(view)  # a connection it cannot use is a 503 naming the fix
        wanted = symbols or list(names.symbols)
        out = _call(lambda: live.health(names, live.latest(names, wanted)))
        out["topic"] = names.topic
        out["group"] = names.group
        out["airflow"] = pipeline_state() if pipeline_state is not None else None
        return out

    return app
