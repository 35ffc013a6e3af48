"""Debian's redis-server as the Celery broker of a test, and the identity of each Celery worker.

The server is the test's own: 127.0.0.1 on a free port, ``protected-mode yes``, a password
(``requirepass`` in a 0600 config file, never on a command line), no persistence (``save ""``,
no AOF) and its own 0700 folder, stopped when the test ends. The broker URL, which carries the
password, is written to a 0600 file beside it; Airflow reads it with
``AIRFLOW__CELERY__BROKER_URL_CMD=cat <file>``, so it is in no process's argv or environment.

``worker_hostname`` is what ``[core] hostname_callable`` names for the workers: two workers on one
machine share its hostname, so each gets its own from ``QUOTEFLOW_CELERY_WORKER``, and the task
instances' ``hostname`` column says which worker ran them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.processes import stop_process

WORKER_VARIABLE = "QUOTEFLOW_CELERY_WORKER"
START_TIMEOUT = 30.0


def worker_hostname(name: str | None = None) -> str:
    """``<machine>-<worker name>``: what a Celery worker's task instances record (``name`` defaults to its own)."""
    name = name or os.environ.get(WORKER_VARIABLE, "").strip()
    if not name:
        raise RuntimeError(f"[core] hostname_callable names worker_hostname but {WORKER_VARIABLE} is unset")
    return f"{socket.gethostname()}-{name}"


@dataclass(frozen=True)
class RedisServer:
    """A running redis-server: where it listens and the file holding its broker URL (with the password)."""

    port: int
    pid: int
    folder: Path
    url_file: Path

    def ping(self) -> bool:
        """True if the server answers PING with the password (and refuses without it: checked by the test)."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()

    @property
    def password(self) -> str:
        return (self.folder / "password").read_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@contextmanager
def redis_server(parent: Path) -> Iterator[RedisServer]:
    """Start redis-server in a new 0700 folder under ``parent``; stop it (and wait for it) on exit."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        raise RuntimeError("redis-server is not installed: apt-get install redis-server (.ci/run does it)")
    folder = parent / "redis"
    folder.mkdir(mode=0o700)
    password = secrets.token_urlsafe(24)
    port = _free_port()
    _write_private(folder / "password", password)
    _write_private(
        folder / "redis.conf",
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {port}",
                "protected-mode yes",
                f"requirepass {password}",
                'save ""',
                "appendonly no",
                f"dir {folder}",
                "daemonize no",
                f"logfile {folder / 'redis.log'}",
                "",
            ]
        ),
    )
    url_file = folder / "broker-url"
    _write_private(url_file, f"redis://:{password}@127.0.0.1:{port}/0")
    proc = subprocess.Popen(
        [binary, str(folder / "redis.conf")], cwd=folder, stdin=subprocess.DEVNULL, start_new_session=True
    )
    server = RedisServer(port=port, pid=proc.pid, folder=folder, url_file=url_file)
    try:
        import redis

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                log = (folder / "redis.log").read_text(errors="replace") if (folder / "redis.log").exists() else ""
                raise RuntimeError(f"redis-server exited ({proc.returncode}) at start:\n{log[-2000:]}")
            try:
                if server.ping():
                    break
            except redis.exceptions.ConnectionError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer on 127.0.0.1:{port}: {exc}") from exc
            time.sleep(0.2)
        yield server
    finally:
        stop_process(proc)
