"""Airflow's metadata cleanup for ``quotes_maintenance``: ``airflow db clean`` of old runs, task instances, XComs, logs.

One call to Airflow's own :func:`airflow.utils.db_cleanup.run_cleanup` (what ``airflow db clean``
runs), without its prompt and without archive tables. Airflow 3 blocks the metadata database from
task code (a task process gets ``airflow-db-not-allowed:///`` as its database URL), so a task that
cleans it needs the database named explicitly: the Connection ``airflow_metadata_db`` (``conn_type``
= the SQLAlchemy dialect, e.g. ``postgresql+psycopg2`` with host, port, schema = database, login,
password; or ``sqlite`` with host = the database file). Where the ORM is not blocked (``dag.test()``,
the scheduler host) Airflow's own session is used and the Connection is not needed.
"""

from __future__ import annotations

import io
import logging
import re
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from typing import Any

from quoteflow.settings import ConfigError

logger = logging.getLogger(__name__)

METADATA_CONN_ID = "airflow_metadata_db"
# Runs, task instances, XComs and the audit log; Airflow adds their dependants (task_instance_history, ...).
DB_CLEAN_TABLES = ("dag_run", "task_instance", "xcom", "log")
BLOCKED_URL_PREFIX = "airflow-db-not-allowed"
_CHECKING = re.compile(r"^Checking table (\S+)$")
_FOUND = re.compile(r"^Found (\d+) rows meeting deletion criteria\.$")


def orm_blocked() -> bool:
    """True inside an Airflow 3 task process, where the supervisor has cut the metadata database off."""
    from airflow import settings

    return str(getattr(settings, "SQL_ALCHEMY_CONN", "")).startswith(BLOCKED_URL_PREFIX)


def metadata_session(conn_id: str = METADATA_CONN_ID) -> Any:
    """A SQLAlchemy session on the metadata database the Connection ``conn_id`` names (foreign keys on for SQLite)."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.sdk import BaseHook
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import URL
    from sqlalchemy.orm import Session

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise ConfigError(
            f"Airflow 3 keeps tasks away from the metadata database, so cleaning it needs the connection "
            f"{conn_id!r}: set AIRFLOW_CONN_{conn_id.upper()}="
            '\'{"conn_type":"postgresql+psycopg2","host":"postgres","port":5432,"schema":"airflow",'
            '"login":"airflow","password":"..."}\' (or {"conn_type":"sqlite","host":"/abs/path/airflow.db"}), '
            "or run `airflow db clean` on the scheduler host and set keep_days there"
        ) from None
    if not conn.conn_type:
        raise ConfigError(f"connection {conn_id!r} needs conn_type = the SQLAlchemy dialect, e.g. postgresql+psycopg2")
    sqlite = conn.conn_type.startswith("sqlite")
    url = URL.create(
        conn.conn_type,
        username=None if sqlite else conn.login,
        password=None if sqlite else conn.password,
        host=None if sqlite else conn.host,
        port=None if sqlite else conn.port,
        database=conn.host if sqlite else conn.schema,
    )
    engine = create_engine(url)
    if sqlite:
        # Airflow's own engine turns foreign keys on; the cleanup relies on their cascades.
        event.listen(engine, "connect", lambda dbapi, _record: dbapi.execute("PRAGMA foreign_keys=ON"))
    return Session(bind=engine)


def _found_rows(printed: str) -> dict[str, int]:
    """Airflow's per-table count of rows meeting the criteria, from what ``run_cleanup`` printed."""
    found: dict[str, int] = {}
    table = None
    for line in printed.splitlines():
        if m := _CHECKING.match(line.strip()):
            table = m[1]
        elif (m := _FOUND.match(line.strip())) and table is not None:
            found[table] = int(m[1])
    return found


def db_clean(keep_days: int, dry_run: bool, *, now: datetime | None = None) -> dict[str, Any]:
    """Delete runs, task instances, XComs and log rows older than ``keep_days`` (``dry_run``: only count them).

    Airflow keeps each DAG's latest scheduled run whatever its age. The summary gives, per table, the
    rows Airflow found older than the cutoff (deleted, or that would be, with ``dry_run``).
    """
    from airflow.utils.db_cleanup import run_cleanup

    if isinstance(keep_days, bool) or not isinstance(keep_days, int) or keep_days < 1:
        raise ConfigError(f"keep_days must be a whole number of days >= 1, got {keep_days!r}")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=keep_days)
    session = metadata_session() if orm_blocked() else None
    printed = io.StringIO()
    try:
        with redirect_stdout(printed):
            run_cleanup(
                clean_before_timestamp=cutoff,
                table_names=list(DB_CLEAN_TABLES),
                dry_run=dry_run,
                confirm=False,
                skip_archive=True,
                error_on_cleanup_failure=True,
                **({"session": session} if session is not None else {}),
            )
    finally:
        if session is not None:
            session.close()
            session.bind.dispose()
        logger.info("airflow db clean said:\n%s", printed.getvalue().strip())
    found = _found_rows(printed.getvalue())
    if not found:
        logger.warning("could not read Airflow's per-table row counts from its output; the counts below are empty")
    summary = {
        "dry_run": dry_run,
        "keep_days": keep_days,
        "clean_before": cutoff.isoformat(),
        "tables": found,
        ("would_delete" if dry_run else "deleted"): sum(found.values()),
        "database": METADATA_CONN_ID if session is not None else "airflow",
    }
    logger.info("db clean%s: %s", " (dry run)" if dry_run else "", summary)
    return summary
