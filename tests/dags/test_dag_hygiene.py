"""Parse hygiene for every DAG file: imports cleanly, touches nothing while parsed, is wired as the house style says.

Each check loops over all files in dags/, so a DAG added later is covered from its first commit.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS.glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_dag_folder_has_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}, f"DAG import errors: {dagbag.import_errors}"
    assert len(dagbag.dags) == len(DAG_FILES), f"{len(DAG_FILES)} DAG files but {len(dagbag.dags)} DAGs parsed"


@contextmanager
def _watch_parse(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list]]:
    """Record metadata queries, connection lookups and outbound sockets while a file is parsed."""
    from airflow import settings
    from airflow.sdk import BaseHook
    from sqlalchemy import event

    seen: dict[str, list] = {"queries": [], "get_connection": [], "connect": []}

    def on_query(conn, cursor, statement, *args) -> None:
        seen["queries"].append(statement)

    original_get = BaseHook.get_connection.__func__  # type: ignore[attr-defined]

    def counting_get_connection(cls, conn_id, *args, **kwargs):
        seen["get_connection"].append(conn_id)
        return original_get(cls, conn_id, *args, **kwargs)

    original_connect = socket.socket.connect

    def recording_connect(self, address):
        seen["connect"].append(address)
        return original_connect(self, address)

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(counting_get_connection))
    monkeypatch.setattr(socket.socket, "connect", recording_connect)
    event.listen(settings.engine, "before_cursor_execute", on_query)
    try:
        yield seen
    finally:
        event.remove(settings.engine, "before_cursor_execute", on_query)


def test_parsing_each_dag_file_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    problems = []
    for path in DAG_FILES:
        with _watch_parse(monkeypatch) as seen:
            bag = DagBag(dag_folder=str(path))
        if bag.import_errors:
            problems.append(f"{path.name}: import errors {bag.import_errors}")
        if len(seen["queries"]) > 1:
            problems.append(f"{path.name}: {len(seen['queries'])} metadata queries during parse (at most 1)")
        if seen["get_connection"]:
            problems.append(f"{path.name}: get_connection{seen['get_connection']} during parse")
        if seen["connect"]:
            problems.append(f"{path.name}: network connections during parse to {seen['connect']}")
    assert not problems, "\n".join(problems)


def test_each_file_holds_one_dag_named_after_it(dagbag) -> None:
    problems = []
    for path in DAG_FILES:
        dags = [dag for dag in dagbag.dags.values() if Path(dag.fileloc).resolve() == path.resolve()]
        if [dag.dag_id for dag in dags] != [path.stem]:
            problems.append(f"{path.name}: holds {[d.dag_id for d in dags]}, expected exactly [{path.stem!r}]")
    assert not problems, "\n".join(problems)


def test_dags_are_documented_tagged_and_retried(dagbag) -> None:
    problems = []
    for dag_id, dag in sorted(dagbag.dags.items()):
        if not dag.tags:
            problems.append(f"{dag_id}: no tags")
        if not dag.doc_md:
            problems.append(f"{dag_id}: no doc_md (use doc_md=__doc__)")
        for task in dag.tasks:
            if task.retries < 2:
                problems.append(f"{dag_id}.{task.task_id}: retries={task.retries} (at least 2)")
    assert not problems, "\n".join(problems)
