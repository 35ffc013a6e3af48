"""Process bookkeeping shared by scripts/services and scripts/run (standard library only).

A PID file holds ``<pid> <start-time>``, the start time being field 22 of ``/proc/<pid>/stat``
(clock ticks since boot). A PID is only ever signalled when the live process with that PID
still has the recorded start time, so a stale file whose PID the kernel has since given to an
unrelated process can never make a stop command signal that process or its group.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import stat
import time
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the parenthesised command name), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    try:
        return raw.rsplit(")", 1)[1].split()
    except IndexError:
        return None


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (stat field 22), or None if it is gone."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])  # field 22; fields[0] is field 3


def alive(pid: int) -> bool:
    """True for a live, non-zombie process."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def write_pid_file(path: Path, pid: int) -> None:
    """Record ``pid`` with its start time; refuses to follow a symlink at ``path``."""
    started = start_time(pid)
    if started is None:
        raise ProcessLookupError(f"process {pid} is not running; not recording it in {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, f"{pid} {started}\n".encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)  # rename replaces a symlink at path; it never writes through it


def read_pid_record(path: Path, owner: int | None = None) -> tuple[int, int] | None:
    """(pid, start time) if that very process is still running, else None (missing, stale or malformed).

    With ``owner``, a file not owned by that uid (or hard-linked elsewhere) is not trusted either: as root,
    a PID file someone else could write might name any process.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if owner is not None and (st.st_uid != owner or st.st_nlink != 1 or not stat.S_ISREG(st.st_mode)):
            return None
        text = os.read(fd, 256).decode(errors="replace")
    finally:
        os.close(fd)
    parts = text.split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None  # an old-style file without a start time cannot be trusted
    pid, recorded_start = int(parts[0]), int(parts[1])
    if not alive(pid) or start_time(pid) != recorded_start:
        return None
    return pid, recorded_start


def read_pid_file(path: Path, owner: int | None = None) -> int | None:
    """The recorded PID if that very process is still running, else None (missing, stale or malformed)."""
    record = read_pid_record(path, owner)
    return record[0] if record else None


def children_map() -> dict[int, list[int]]:
    """Parent PID → child PIDs, for every process on the machine."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None or len(fields) < 2:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (tasks may start their own sessions, so the group is not enough)."""
    children = children_map()
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def snapshot(pids: list[int]) -> dict[int, int]:
    """PID → start time for those still running: what a later signal may be sent to."""
    out = {}
    for pid in pids:
        started = start_time(pid)
        if started is not None and alive(pid):
            out[pid] = started
    return out


def signal_if_same(pid: int, started: int, sig: int, group: bool = False) -> bool:
    """Send ``sig`` to ``pid`` (or its group) only if it is still the process that started at ``started``."""
    if start_time(pid) != started:
        return False
    try:
        if group and os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def terminate(victims: dict[int, int], grace: float, group_leader: int | None = None) -> bool:
    """SIGTERM every victim still the same process, wait ``grace`` s, then SIGKILL; True once all are gone."""

    def remaining() -> dict[int, int]:
        return {p: s for p, s in victims.items() if alive(p) and start_time(p) == s}

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for pid, started in remaining().items():
            signal_if_same(pid, started, sig, group=pid == group_leader)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and remaining():
            time.sleep(0.2)
        if not remaining():
            return True
    return not remaining()


def _decode_address(hex_addr: str) -> str:
    """An address of /proc/net/tcp{,6} (host-order 32-bit words in hex) as text: ``0100007F`` → ``127.0.0.1``."""
    raw = bytes.fromhex(hex_addr)
    ip = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
    mapped = getattr(ip, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped else str(ip)


def parse_listeners(text: str) -> dict[int, tuple[str, int]]:
    """Socket inode → (local address, port) of each LISTEN (state 0A) line of a /proc/net/tcp or tcp6 text."""
    found = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != "0A":
            continue
        address, port = fields[1].split(":")
        found[int(fields[9])] = (_decode_address(address), int(port, 16))
    return found


def tcp_listeners() -> dict[int, tuple[str, int]]:
    """Socket inode → (local address, port) of every listening TCP socket in this network namespace."""
    found: dict[int, tuple[str, int]] = {}
    for name in ("tcp", "tcp6"):
        try:
            found.update(parse_listeners(Path(f"/proc/net/{name}").read_text()))
        except FileNotFoundError:
            continue  # no IPv6 in this kernel
    return found


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets ``pid`` holds open (``/proc/<pid>/fd/* → socket:[inode]``)."""
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listeners_of(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, local address, port) of every listening TCP socket held by one of ``pids``."""
    listening = tcp_listeners()
    return sorted((pid, *listening[inode]) for pid in pids for inode in socket_inodes(pid) if inode in listening)


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def ancestors(pid: int) -> list[int]:
    """The parent chain of ``pid`` up to init: what a sweep must never signal when run from inside it."""
    chain = []
    while True:
        fields = _stat_fields(pid)
        if fields is None or len(fields) < 2 or int(fields[1]) <= 0:
            return chain
        pid = int(fields[1])
        chain.append(pid)


def with_environ(entry: str) -> list[int]:
    """Live processes whose environment holds exactly the ``NAME=value`` ``entry`` (not the caller or its parents)."""
    needle = entry.encode()
    skip = {os.getpid(), *ancestors(os.getpid())}
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in skip:
            continue
        try:
            env = (proc / "environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if needle in env.split(b"\0") and alive(int(proc.name)):
            found.append(int(proc.name))
    return found
