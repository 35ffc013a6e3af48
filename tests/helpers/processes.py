"""What is still running of a `make run`, and what it listens on: the checks behind "make stop leaves nothing".

A process belongs to a run folder if it descends from a process its PID files named (remembered
before the files are deleted), if its working directory or one of its open files is inside the
folder, or if its environment carries the folder (``QUOTEFLOW_RUN_DIR`` or the marker
``QUOTEFLOW_RUN_SPAWNED`` that scripts/run gives its children). Command lines are not looked at:
Airflow renames its processes (``airflow worker -- …``, ``airflow task supervisor: …``).
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from scripts import procs

ENV_MARKERS = ("QUOTEFLOW_RUN_DIR", "QUOTEFLOW_RUN_SPAWNED")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return "?"


def _inside(path: str, folder: Path) -> bool:
    return path == str(folder) or path.startswith(f"{folder}/")


def recorded_pids(run_dir: Path) -> dict[int, int]:
    """PID → start time of each process a PID file in ``run_dir`` names and that is still that process."""
    found = {}
    for pid_file in run_dir.glob("*.pid"):
        pid = procs.read_pid_file(pid_file)
        if pid is not None:
            found.update(procs.snapshot([pid]))
    return found


def process_tree(run_dir: Path) -> list[int]:
    """The recorded processes of ``run_dir`` and everything below them."""
    roots = list(recorded_pids(run_dir))
    return sorted({p for root in roots for p in (root, *procs.descendants(root))})


def _reason(pid: int, run_dir: Path, marker_entries: set[bytes]) -> str | None:
    proc = Path(f"/proc/{pid}")
    try:
        if _inside(os.readlink(proc / "cwd"), run_dir):
            return "its working directory is in the run folder"
    except OSError:
        pass
    try:
        fds = list((proc / "fd").iterdir())
    except OSError:
        fds = []
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if _inside(target, run_dir):
            return f"it holds {target} open"
    try:
        environ = set((proc / "environ").read_bytes().split(b"\0"))
    except OSError:
        environ = set()
    hit = environ & marker_entries
    if hit:
        return f"its environment has {sorted(hit)[0].decode()}"
    return None


@dataclass
class RunProcesses:
    """Remembers a run's processes while its PID files exist, and later reports which of them, or of any
    other process tied to the run folder, still runs."""

    run_dir: Path
    known: dict[int, int] = field(default_factory=dict)

    def remember(self) -> None:
        """Note the recorded processes and their descendants now (call it again to add late children)."""
        self.known.update(procs.snapshot(process_tree(self.run_dir)))

    def leftovers(self) -> list[str]:
        """One line per process of this run still alive, saying why it counts as ours."""
        run_dir = self.run_dir.resolve()
        me = {os.getpid(), *procs.ancestors(os.getpid())}
        found: dict[int, str] = {}
        for pid, started in self.known.items():
            if procs.alive(pid) and procs.start_time(pid) == started:
                found[pid] = "it was recorded or descended from a recorded process"
        for pid in list(found):
            for child in procs.descendants(pid):
                found.setdefault(child, f"it descends from {pid}")
        markers = {f"{name}={run_dir}".encode() for name in ENV_MARKERS}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if pid in found or pid in me or not procs.alive(pid):
                continue
            reason = _reason(pid, run_dir, markers)
            if reason:
                found[pid] = reason
        return [f"{pid} ({_cmdline(pid)[:100]}): {why}" for pid, why in sorted(found.items()) if pid not in me]


def non_loopback_listeners(pids: list[int]) -> list[str]:
    """One line per listening TCP socket of ``pids`` whose local address is not 127.0.0.0/8 or ::1."""
    return [
        f"{pid} ({_cmdline(pid)[:80]}) listens on {address}:{port}"
        for pid, address, port in procs.listeners_of(pids)
        if not procs.is_loopback(address)
    ]


def listener_table(pids: list[int]) -> list[str]:
    """``address:port  pid  command`` for every listening socket of ``pids`` (for logs and reports)."""
    return [f"{address}:{port}  {pid}  {_cmdline(pid)[:80]}" for pid, address, port in procs.listeners_of(pids)]


def read_until(proc: subprocess.Popen, text: str, timeout: float) -> str:
    """What ``proc`` printed on stdout up to and including ``text``; fail the test if it ends or stalls first."""
    import pytest

    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            pytest.fail(f"{text!r} not printed within {timeout:.0f} s; got {seen[-2000:]!r}")
        chunk = os.read(proc.stdout.fileno(), 65536).decode(errors="replace")
        if not chunk:
            pytest.fail(f"the output ended before {text!r}; got {seen[-2000:]!r}")
        seen += chunk
    return seen


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM ``proc``, then SIGKILL it if it has not exited within ``timeout`` s; reaped either way."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
