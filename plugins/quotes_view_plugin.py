"""Airflow plugin: the live quotes view (``/quotes-view``) and its "Quotes" entry in the UI's navigation.

Thin wiring over ``quoteflow.liveview``: this file adds what only Airflow knows — who the
user is and what they may see (every route, page and static files included, requires an Airflow user —
by Bearer token or the UI's ``_token`` cookie, which the browser also sends to the iframe'd page — whom
the auth manager lets read the runs of ``quotes_producer`` and ``quotes_indexer``, whose data the view
shows), the ``kafka_default`` and ``elasticsearch_default`` connections, ``[quoteflow]`` settings, and
the state of the pipeline's DAG runs.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import bearer_scheme, get_user
from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from quoteflow import settings
from quoteflow.liveview.service import BACKEND_TIMEOUT_S, LiveNames, LiveView
from quoteflow.liveview.web import create_app

logger = logging.getLogger(__name__)

URL_PREFIX = "/quotes-view"
STATIC_DIR = Path(__file__).resolve().parent / "quotes_view" / "static"
INDEXER_DAG_ID = "quotes_indexer"
PRODUCER_DAG_ID = "quotes_producer"
PRODUCER_TASK_ID = "produce_quotes"  # one task instance per shard (mapped), or one for all symbols
# What the page shows of each DAG: its runs (state, windows), task tries, and the producer's XCom summary.
REQUIRED_DAG_ACCESS = (
    (PRODUCER_DAG_ID, DagAccessEntity.RUN),
    (PRODUCER_DAG_ID, DagAccessEntity.TASK_INSTANCE),
    (PRODUCER_DAG_ID, DagAccessEntity.XCOM),
    (INDEXER_DAG_ID, DagAccessEntity.RUN),
)
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]

_views: dict[tuple[str, str], LiveView] = {}
_views_lock = threading.Lock()


def _connection(conn_id: str) -> settings.ConnectionInfo:
    """The connection from Airflow's secrets backends (``AIRFLOW_CONN_<ID>`` first) and database."""
    from airflow.models.connection import Connection

    return settings.ConnectionInfo.from_connection(conn_id, Connection.get_connection_from_secrets(conn_id))


def _kafka_config() -> dict[str, Any]:
    """The ``kafka_default`` config as the DAGs build it: through the Kafka provider's hook (``dags/_shared``).

    One implementation for both sides, so the provider's conventions (callback allow-list, MSK IAM,
    errors that name the connection) hold here too. The API server does not put the DAGs folder on
    ``sys.path`` (the DAG processor and workers do), so it is added before the import.
    """
    from airflow import settings as airflow_settings

    dags = str(Path(airflow_settings.DAGS_FOLDER).resolve())
    if dags not in sys.path:
        sys.path.append(dags)
    from _shared.connections import kafka_config

    return kafka_config(settings.KAFKA_CONN_ID)


def _names() -> LiveNames:
    symbols = conf.get("quoteflow", "symbols", fallback=",".join(settings.DEFAULT_SYMBOLS))
    return LiveNames(
        topic=conf.get("quoteflow", "quotes_topic", fallback=settings.QUOTES_TOPIC),
        dlq_topic=conf.get("quoteflow", "dlq_topic", fallback=settings.DLQ_TOPIC),
        index_pattern=conf.get("quoteflow", "index_pattern", fallback=settings.INDEX_PATTERN),
        group=conf.get("quoteflow", "consumer_group", fallback=settings.CONSUMER_GROUP),
        symbols=tuple(s.strip() for s in symbols.split(",") if s.strip()),
        bars_topic=conf.get("quoteflow", "bars_topic", fallback=settings.BARS_TOPIC),
        bars_index_pattern=conf.get("quoteflow", "bars_index_pattern", fallback=settings.BARS_INDEX_PATTERN),
        gaps_topic=conf.get("quoteflow", "gaps_topic", fallback=settings.GAPS_TOPIC),
        gaps_index_pattern=conf.get("quoteflow", "gaps_index_pattern", fallback=settings.GAPS_INDEX_PATTERN),
    )


def _view() -> tuple[LiveView, LiveNames]:
    """One :class:`LiveView` per (Kafka, Elasticsearch) pair, made on first use."""
    kafka = _kafka_config()
    es_args = settings.elasticsearch_client_args(_connection(settings.ELASTICSEARCH_CONN_ID))
    key = (str(kafka["bootstrap.servers"]), str(es_args["hosts"]))
    with _views_lock:
        view = _views.get(key)
        if view is None:
            from elasticsearch import Elasticsearch

            # A page waits on every request: no retries, and never longer than the view's backend timeout.
            timeout = min(float(es_args.pop("request_timeout", BACKEND_TIMEOUT_S)), BACKEND_TIMEOUT_S)
            view = _views[key] = LiveView(
                lambda: Elasticsearch(**es_args, request_timeout=timeout, max_retries=0),
                kafka,
                es_label=f"Elasticsearch at {', '.join(es_args['hosts'])}",
            )
            logger.info("quotes view reads Kafka %s and Elasticsearch %s", key[0], key[1])
    return view, _names()


def _run_state(run: Any) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "run_id": run.run_id,
        "state": str(run.state) if run.state is not None else None,
        "data_interval_start": iso(run.data_interval_start),
        "data_interval_end": iso(run.data_interval_end),
        "start_date": iso(run.start_date),
        "end_date": iso(run.end_date),
    }


def _last_producer_summary(session: Any) -> dict[str, Any] | None:
    """The summary the newest finished producer run returned (quotes, reconnects, errors), from XCom."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    row = session.execute(
        select(XComModel.run_id, XComModel.value)
        .where(XComModel.dag_id == PRODUCER_DAG_ID, XComModel.key == "return_value")
        .order_by(XComModel.timestamp.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    value = json.loads(row.value) if isinstance(row.value, str) else row.value
    if not isinstance(value, dict):
        return None
    keep = ("quotes", "connects", "reconnects", "errors", "delivery_failures")
    return {"run_id": row.run_id, **{k: value.get(k) for k in keep}}


def _shards(session: Any, run_id: str, tries: Any) -> list[dict[str, Any]]:
    """One entry per shard of the producer run: each task instance of ``produce_quotes`` is one shard.

    An unsharded producer (one task, ``map_index`` -1) is shard ``"0"``. ``stats`` is the newest XCom the
    shard's task instance left (``stats`` pushed while it streams, else its ``return_value`` summary), or
    ``None`` when it has none yet.
    """
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    rows = session.execute(
        select(XComModel.task_id, XComModel.map_index, XComModel.key, XComModel.value)
        .where(
            XComModel.dag_id == PRODUCER_DAG_ID,
            XComModel.run_id == run_id,
            XComModel.key.in_(("stats", "return_value")),
        )
        .order_by(XComModel.timestamp.asc())
    ).all()
    stats: dict[tuple[str, int], dict[str, Any]] = {}
    for task_id, map_index, key, raw in rows:
        value = json.loads(raw) if isinstance(raw, str) else raw
        if isinstance(value, dict):
            stats[(task_id, map_index)] = {**value, "from": key}  # the newest one wins
    shards = []
    for task_id, map_index, state, try_number in tries:
        if task_id != PRODUCER_TASK_ID:
            continue  # e.g. plan_shards, which maps produce_quotes
        own = stats.get((task_id, map_index))
        shard = own.get("shard") if own and own.get("shard") is not None else str(max(map_index, 0))
        shards.append(
            {
                "shard": str(shard),
                "task_id": task_id,
                "map_index": map_index,
                "state": str(state) if state is not None else None,
                "try_number": try_number,
                "stats": own,
            }
        )
    return sorted(shards, key=lambda s: (s["map_index"], s["task_id"]))


def pipeline_state() -> dict[str, Any]:
    """The newest producer run (with its task's try number) and the newest and last finished indexer windows."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    def newest(session: Any, dag_id: str, *conditions: Any) -> Any:
        query = select(DagRun).where(DagRun.dag_id == dag_id, *conditions).order_by(DagRun.run_after.desc())
        return session.scalars(query.limit(1)).first()

    try:
        with create_session() as session:
            producer = newest(session, PRODUCER_DAG_ID)
            indexer = newest(session, INDEXER_DAG_ID)
            finished = newest(session, INDEXER_DAG_ID, DagRun.end_date.is_not(None))
            out: dict[str, Any] = {
                "producer": _run_state(producer) if producer else None,
                "indexer_latest": _run_state(indexer) if indexer else None,
                "indexer_last_finished": _run_state(finished) if finished else None,
            }
            if producer is not None:
                tries = session.execute(
                    select(
                        TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state, TaskInstance.try_number
                    ).where(TaskInstance.dag_id == PRODUCER_DAG_ID, TaskInstance.run_id == producer.run_id)
                ).all()
                out["producer"]["tasks"] = [
                    {"task_id": t, "map_index": m, "state": str(s), "try_number": n} for t, m, s, n in tries
                ]
                out["producer"]["shards"] = _shards(session, producer.run_id, tries)
            out["producer_last_summary"] = _last_producer_summary(session)
            return out
    except SQLAlchemyError as exc:
        logger.warning("quotes view could not read DAG run state: %s", exc)
        return {"error": f"Airflow metadata database: {exc.__class__.__name__}"}


async def require_pipeline_reader(request: Request, bearer: BearerCredentials) -> None:
    """401 unless the caller is an Airflow user; 403 unless the auth manager lets them read the pipeline's DAGs.

    Airflow's own check answers 403 to a token it cannot verify (wrong key, audience, malformed); that
    caller is not logged in at all, so here it is a 401 like a missing or expired token, and 403 stays
    what it means: a known user who may not see this.
    """
    try:
        user = await get_user(request, _oauth_token=None, bearer_credentials=bearer)
    except HTTPException as exc:
        if exc.status_code not in (401, 403):
            raise
        detail = f"not signed in to Airflow: {exc.detail}"
        raise HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Bearer"}) from None
    # An auth manager may ask a remote service: off the event loop, like Airflow's own sync permission checks.
    missing = await run_in_threadpool(_missing_dag_access, user)
    if missing is not None:
        dag_id, entity = missing
        raise HTTPException(403, detail=f"the quotes view needs read access to {entity.value} of DAG {dag_id!r}")


def _missing_dag_access(user: Any) -> tuple[str, DagAccessEntity] | None:
    """The first (DAG, entity) of :data:`REQUIRED_DAG_ACCESS` that ``user`` may not read, if any."""
    auth = get_auth_manager()
    for dag_id, entity in REQUIRED_DAG_ACCESS:
        if not auth.is_authorized_dag(method="GET", access_entity=entity, details=_dag_details(dag_id), user=user):
            return dag_id, entity
    return None


def _dag_details(dag_id: str) -> DagDetails:
    """The DAG as the auth manager sees it; its team matters only when Airflow runs in multi-team mode."""
    if not conf.getboolean("core", "multi_team", fallback=False):
        return DagDetails(id=dag_id)
    from airflow.models.dag import DagModel

    return DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))


app = create_app(
    _view,
    STATIC_DIR,
    dependencies=[Depends(require_pipeline_reader)],
    pipeline_state=pipeline_state,
)


class QuotesViewPlugin(AirflowPlugin):
    """Mounts the live quotes view and puts "Quotes" in the navigation (shown in an iframe in the UI)."""

    name = "quotes_view"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Quotes live view"}]
    external_views = [
        {
            "name": "Quotes",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "quotes",
            "category": "browse",
        }
    ]
