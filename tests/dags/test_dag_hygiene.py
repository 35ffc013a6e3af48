"""Parse hygiene for every DAG file: imports cleanly, touches nothing while parsed, is wired as the house style says.

Each check loops over all files in dags/, so a DAG added later is covered from its first commit.
The parse checker watches three things while one file is parsed: metadata queries, every path to
a Connection or Variable (public API, SDK internals, secrets backends), and TCP connections — both
``socket.connect`` from Python and, through ``/proc/self/net/tcp*``, sockets opened in C (librdkafka).
The ``planted`` tests prove the checker catches each kind of parse-time I/O in a scratch DAG file.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from scripts.procs import _decode_address, socket_inodes

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS.glob("*.py") if not p.name.startswith("_"))

# librdkafka connects from its own threads after a client is constructed, at once or on its next 1 s
# timer tick (measured here: 0.01-1.03 s); wait long enough for two ticks under load.
CONNECT_WAIT_S = 2.5
TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT"}
# Every way a DAG file could read a Connection or Variable: (module, class or None, attribute).
LOOKUPS = (
    ("airflow.sdk", "Connection", "get"),
    ("airflow.sdk", "Connection", "async_get"),
    ("airflow.sdk", "BaseHook", "get_connection"),
    ("airflow.sdk", "Variable", "get"),
    ("airflow.models", "Connection", "get_connection_from_secrets"),
    ("airflow.models", "Variable", "get"),
    ("airflow.sdk.execution_time.context", None, "_get_connection"),
    ("airflow.sdk.execution_time.context", None, "_async_get_connection"),
    ("airflow.sdk.execution_time.context", None, "_get_variable"),
)
SECRETS_METHODS = ("get_conn_value", "get_conn_uri", "get_connection", "get_variable", "get_config")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_dag_folder_has_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}, f"DAG import errors: {dagbag.import_errors}"
    assert len(dagbag.dags) == len(DAG_FILES), f"{len(DAG_FILES)} DAG files but {len(dagbag.dags)} DAGs parsed"


# ---------------------------------------------------------------- the parse checker


def tcp_connections() -> dict[int, str]:
    """This process's TCP connections that are established or being opened: socket inode → ``state remote``."""
    mine = socket_inodes(os.getpid())
    found = {}
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        for row in rows:
            fields = row.split()
            state, inode = fields[3], int(fields[9])
            if inode in mine and state in TCP_STATES:
                host, port = fields[2].split(":")
                found[inode] = f"{TCP_STATES[state]} {_decode_address(host)}:{int(port, 16)}"
    return found


def _spy(mp: pytest.MonkeyPatch, owner: Any, name: str, label: str, calls: list[str]) -> None:
    """Replace ``owner.name`` (function, classmethod or method) by a wrapper that records ``label(args)``."""
    attr = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
    is_classmethod = isinstance(attr, classmethod)
    func = attr.__func__ if is_classmethod else attr

    def recording(*args, **kwargs):
        positional = args[1:] if isinstance(owner, type) else args  # skip cls / self
        shown = [repr(a) for a in positional if isinstance(a, str)]
        shown += [f"{k}={v!r}" for k, v in kwargs.items() if isinstance(v, str)]
        calls.append(f"{label}({', '.join(shown)})")
        return func(*args, **kwargs)

    mp.setattr(owner, name, classmethod(recording) if is_classmethod else recording)


def _secrets_backends() -> list[type]:
    from airflow._shared.secrets_backend.base import BaseSecretsBackend

    importlib.import_module("airflow.secrets.environment_variables")
    importlib.import_module("airflow.secrets.metastore")
    seen, todo = [], [BaseSecretsBackend]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return seen


@contextmanager
def watch_parse() -> Iterator[dict[str, list]]:
    """Record metadata queries, Connection/Variable lookups and TCP connections made while the block runs."""
    from airflow import settings
    from sqlalchemy import event

    seen: dict[str, list] = {"queries": [], "lookups": [], "connect": [], "tcp": []}

    def on_query(conn, cursor, statement, *args) -> None:
        seen["queries"].append(statement)

    original_connect = socket.socket.connect

    def recording_connect(self, address):
        seen["connect"].append(address)
        return original_connect(self, address)

    before = tcp_connections()
    with pytest.MonkeyPatch.context() as mp:
        for module_name, class_name, name in LOOKUPS:
            module = importlib.import_module(module_name)
            owner = getattr(module, class_name) if class_name else module
            _spy(mp, owner, name, f"{module_name}.{class_name + '.' if class_name else ''}{name}", seen["lookups"])
        for cls in _secrets_backends():
            for name in SECRETS_METHODS:
                if name in cls.__dict__:
                    _spy(mp, cls, name, f"{cls.__name__}.{name}", seen["lookups"])
        mp.setattr(socket.socket, "connect", recording_connect)
        event.listen(settings.engine, "before_cursor_execute", on_query)
        try:
            yield seen
            deadline = time.monotonic() + CONNECT_WAIT_S
            while True:
                seen["tcp"] = sorted(v for k, v in tcp_connections().items() if k not in before)
                if seen["tcp"] or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        finally:
            event.remove(settings.engine, "before_cursor_execute", on_query)


def parse_problems(path: Path) -> tuple[list[str], Any]:
    """Parse one DAG file alone; what it did that a parse must not do, and the DagBag (keep it alive)."""
    from airflow.dag_processing.dagbag import DagBag

    with watch_parse() as seen:
        # The bag holds the module, and so any client it built, until the TCP check after the block.
        bag = DagBag(dag_folder=str(path))
    problems = []
    if bag.import_errors:
        problems.append(f"{path.name}: import errors {bag.import_errors}")
    if len(seen["queries"]) > 1:
        problems.append(f"{path.name}: {len(seen['queries'])} metadata queries during parse (at most 1)")
    if seen["lookups"]:
        problems.append(f"{path.name}: Connection/Variable lookups during parse: {seen['lookups']}")
    if seen["connect"]:
        problems.append(f"{path.name}: network connections during parse to {seen['connect']}")
    if seen["tcp"]:
        problems.append(f"{path.name}: TCP connections opened during parse (Python or C): {seen['tcp']}")
    return problems, bag


def test_parsing_each_dag_file_does_no_io() -> None:
    problems = []
    for path in DAG_FILES:
        found, _bag = parse_problems(path)
        problems.extend(found)
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- the checker catches planted faults

PLANTED_DAG = """
from datetime import datetime

from airflow.sdk import dag, task

{setup}


@dag(dag_id="planted", schedule=None, start_date=datetime(2026, 1, 1), tags=["test"], doc_md="planted")
def planted():
    @task(retries=2)
    def noop():
        return None

    noop()


planted()
"""

PLANTED = {
    "kafka_consumer": (
        "from confluent_kafka import Consumer\n"
        "consumer = Consumer({{'bootstrap.servers': '127.0.0.1:{port}', 'group.id': 'planted'}})",
        "TCP connections opened during parse (Python or C): ['ESTABLISHED 127.0.0.1:{port}']",
    ),
    "python_socket": (
        "import socket\nsock = socket.create_connection(('127.0.0.1', {port}))",
        "network connections during parse to [('127.0.0.1', {port})]",
    ),
    "sdk_variable": (
        "from airflow.sdk import Variable\nSYMBOLS = Variable.get('planted_symbols', default='BINANCE:SOLUSDT')",
        "airflow.sdk.Variable.get('planted_symbols'",
    ),
    "models_variable": (
        "from airflow.models import Variable\nSYMBOLS = Variable.get('planted_symbols', default_var='x')",
        "airflow.models.Variable.get('planted_symbols'",
    ),
    "sdk_connection": (
        "from airflow.sdk import Connection\ntry:\n    CONN = Connection.get('planted_conn')\nexcept Exception:\n"
        "    CONN = None",
        "airflow.sdk.Connection.get('planted_conn')",
    ),
    "hook_connection": (
        "from airflow.sdk import BaseHook\ntry:\n    CONN = BaseHook.get_connection('planted_conn')\n"
        "except Exception:\n    CONN = None",
        "airflow.sdk.BaseHook.get_connection('planted_conn')",
    ),
    "env_secrets_backend": (
        "from airflow.secrets.environment_variables import EnvironmentVariablesBackend\n"
        "URI = EnvironmentVariablesBackend().get_conn_value('planted_conn')",
        "EnvironmentVariablesBackend.get_conn_value('planted_conn')",
    ),
}


@pytest.fixture
def listener() -> Iterator[int]:
    """A loopback TCP port that accepts connections (never answers): what a planted client connects to."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as server:
        yield server.getsockname()[1]


@pytest.mark.parametrize("fault", sorted(PLANTED))
def test_the_checker_catches_planted_parse_time_io(fault: str, listener: int, tmp_path: Path) -> None:
    setup, expected = PLANTED[fault]
    path = tmp_path / "planted.py"
    path.write_text(PLANTED_DAG.format(setup=setup.format(port=listener)))
    problems, bag = parse_problems(path)
    try:
        assert any(expected.format(port=listener) in p for p in problems), (
            f"the parse checker missed {fault}; it reported: {problems}"
        )
        assert not any("import errors" in p for p in problems), problems  # caught by the spy, not by a crash
    finally:
        planted = [key for key, m in list(sys.modules.items()) if getattr(m, "__file__", None) == str(path)]
        for key in planted:
            module = sys.modules.pop(key)
            for name in ("consumer", "sock"):
                if hasattr(module, name):
                    getattr(module, name).close()
        del bag


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
