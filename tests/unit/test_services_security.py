"""scripts/services run as root: planted folders and links are refused, services run unprivileged, PIDs are proven.

Each test plants what a local user could plant (as ``nobody``) or what a stale PID file could say, runs the
real script as root on spare ports with its own state folder, and checks what root did. CI runs as root.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import procs

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "scripts" / "services"
ES_VERSION = re.search(r"<es.version>([^<]+)<", (ROOT / "scripts/services-pom.xml").read_text()).group(1)
KAFKA_VERSION = re.search(r"<kafka.version>([^<]+)<", (ROOT / "scripts/services-pom.xml").read_text()).group(1)
SERVICE_USER = "quoteflow-es"


@pytest.fixture(autouse=True)
def _as_root() -> None:
    assert os.geteuid() == 0, (
        "these tests check what scripts/services does when root runs it (plant files as nobody, start services as "
        "quoteflow-es): run them as root, as CI does"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(state: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST", "QUOTEFLOW"))}
    env.update(
        QUOTEFLOW_STATE_DIR=str(state),
        QUOTEFLOW_KAFKA_PORT=str(_free_port()),
        QUOTEFLOW_KAFKA_CONTROLLER_PORT=str(_free_port()),
        QUOTEFLOW_ES_PORT=str(_free_port()),
        QUOTEFLOW_ES_TRANSPORT_PORT=str(_free_port()),
        QUOTEFLOW_KAFKA_HEAP="256m",
        QUOTEFLOW_ES_HEAP="512m",
    )
    env.update(overrides)
    return env


def _services(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SERVICES), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _as_user(user: str, script: str, *args: str) -> None:
    """Run a shell script as ``user`` (uid, gid and no other groups), the way a local attacker would."""
    entry = pwd.getpwnam(user)
    subprocess.run(
        ["/bin/sh", "-euc", script, "sh", *args],
        user=entry.pw_uid,
        group=entry.pw_gid,
        extra_groups=[],
        cwd="/",
        check=True,
        capture_output=True,
    )


def _shared_dir(mode: int) -> Path:
    """A fresh root-owned folder under /tmp with ``mode`` (e.g. 0o1777, like /var/tmp)."""
    path = Path(tempfile.mkdtemp(prefix="quoteflow-sec-"))
    os.chmod(path, mode)
    return path


@pytest.fixture
def shared_dirs() -> Iterator[list[Path]]:
    made: list[Path] = []
    yield made
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def _victim(folder: Path) -> Path:
    victim = folder / "victim"
    victim.write_text("root's own file\n")
    os.chmod(victim, 0o600)
    return victim


def _assert_victim_untouched(victim: Path) -> None:
    st = os.lstat(victim)
    assert victim.read_text() == "root's own file\n", "root wrote through the planted link"
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), "root chowned or chmodded the link's target"


PLANT_ES = """
dir=$1; marker=$2; victim=$3; version=$4
mkdir -p "$dir/elasticsearch/elasticsearch-$version/bin" "$dir/elasticsearch/logs"
printf '#!/bin/sh\\nid -u > %s\\n' "$marker" > "$dir/elasticsearch/elasticsearch-$version/bin/elasticsearch"
chmod 755 "$dir/elasticsearch/elasticsearch-$version/bin/elasticsearch"
ln -s "$victim" "$dir/elasticsearch/logs/stdout.log"
chmod -R a+rwX "$dir"
"""


@pytest.mark.parametrize("how", ["owned", "symlink"])
def test_root_refuses_a_service_folder_planted_in_a_shared_base(
    tmp_path: Path, shared_dirs: list[Path], how: str
) -> None:
    """The base folder is shared like /var/tmp; the user pre-creates the digest folder (or a link to their own)."""
    base = _shared_dir(0o1777)
    shared_dirs.append(base)
    os.chmod(tmp_path, 0o700)  # the service user cannot traverse the state folder: the base is used
    state = (tmp_path / "state").resolve()
    digest = hashlib.sha256(str(state).encode()).hexdigest()[:12]
    planted = base / digest
    marker = base / "fake-elasticsearch-ran"
    victim = _victim(tmp_path)
    if how == "owned":
        _as_user("nobody", PLANT_ES, str(planted), str(marker), str(victim), ES_VERSION)
    else:
        _as_user("nobody", PLANT_ES, str(base / "decoy"), str(marker), str(victim), ES_VERSION)
        _as_user("nobody", 'ln -s "$1" "$2"', str(base / "decoy"), str(planted))

    proc = _services(_env(state, QUOTEFLOW_SERVICES_BASE=str(base)), "up", "elasticsearch", timeout=120)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"refusing {planted}: " in proc.stderr
    if how == "owned":
        assert "owned by nobody (uid 65534), not root" in proc.stderr
        assert os.lstat(planted).st_uid == 65534, "root chowned the planted folder"
    else:
        assert f"it is a symlink (to {base / 'decoy'})" in proc.stderr
    assert "rm -rf" in proc.stderr, "the refusal says what to do"
    assert not marker.exists(), f"root ran the planted script (it ran as uid {marker.read_text().strip()})"
    _assert_victim_untouched(victim)
    assert not (state / "elasticsearch" / "elasticsearch.pid").exists()


@pytest.mark.parametrize("service", ["kafka", "elasticsearch"])
def test_root_refuses_a_state_folder_another_user_owns(tmp_path: Path, shared_dirs: list[Path], service: str) -> None:
    """QUOTEFLOW_STATE_DIR names a folder a local user made first (traversable, so it would be used directly)."""
    shared = _shared_dir(0o1777)
    shared_dirs.append(shared)
    state = shared / "state"
    marker = shared / "fake-elasticsearch-ran"
    victim = _victim(tmp_path)
    _as_user("nobody", PLANT_ES, str(state), str(marker), str(victim), ES_VERSION)

    proc = _services(_env(state), "up", service, timeout=120)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"refusing {state}: it is owned by nobody (uid 65534), not root" in proc.stderr
    assert not marker.exists()
    _assert_victim_untouched(victim)
    assert all(os.lstat(p).st_uid == 65534 for p in [state, *state.rglob("*")]), "root chowned a planted file"


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "300"], start_new_session=True)


def _stopped_or_gone(pid: int) -> bool:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0] in ("T", "t", "Z", "X")


@pytest.mark.parametrize("kind", ["old-format", "wrong-start-time", "foreign-owner", "symlink"])
def test_down_never_signals_a_live_process_it_did_not_start(tmp_path: Path, kind: str) -> None:
    sleeper = _sleeper()
    try:
        started = procs.start_time(sleeper.pid)
        pid_dir = tmp_path / "state" / "kafka"
        pid_dir.mkdir(parents=True)
        path = pid_dir / "kafka.pid"
        if kind == "old-format":
            path.write_text(f"{sleeper.pid}\n")
        elif kind == "wrong-start-time":
            path.write_text(f"{sleeper.pid} {started - 1}\n")
        elif kind == "foreign-owner":
            path.write_text(f"{sleeper.pid} {started}\n")  # right in every way but who wrote it
            os.chown(path, 65534, 65534)
        else:
            (tmp_path / "elsewhere.pid").write_text(f"{sleeper.pid} {started}\n")
            path.symlink_to(tmp_path / "elsewhere.pid")

        proc = _services(_env(tmp_path / "state"), "down", "kafka", timeout=60)

        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"{path} names no live process this script started" in proc.stdout
        assert "signalling nothing" in proc.stdout
        time.sleep(0.5)
        assert sleeper.poll() is None and not _stopped_or_gone(sleeper.pid), "down signalled a process it never started"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_down_does_stop_the_process_a_trusted_pid_file_names(tmp_path: Path) -> None:
    """The control for the test above: with a true record, the same command does signal."""
    sleeper = _sleeper()
    try:
        procs.write_pid_file(tmp_path / "state" / "kafka" / "kafka.pid", sleeper.pid)
        proc = _services(_env(tmp_path / "state"), "down", "kafka", timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"stopping kafka (pid {sleeper.pid})" in proc.stdout
        assert sleeper.wait(timeout=30) == -15
        assert not (tmp_path / "state" / "kafka" / "kafka.pid").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


FAKE_JAVA = """#!/bin/sh
case "$*" in
  *-version*) echo 'openjdk version "25.0.1" 2025-10-21' >&2; exit 0 ;;
  *StorageTool*) exit 0 ;;
esac
echo "fake java ran as uid $(id -u)"
sleep 2
exit 3
"""


@pytest.mark.parametrize("service", ["kafka", "elasticsearch"])
def test_a_start_that_fails_records_no_pid(shared_dirs: list[Path], service: str) -> None:
    """A JDK whose java dies during start-up: the error names the log, and no PID (nor process) is left."""
    folder = _shared_dir(0o755)  # the service user must reach the fake JDK and the state folder
    shared_dirs.append(folder)
    java = folder / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(FAKE_JAVA)
    java.chmod(0o755)
    state = folder / "state"
    env = _env(state, KAFKA_JAVA_HOME=str(folder / "jdk"), ES_JAVA_HOME=str(folder / "jdk"))

    proc = _services(env, "up", service, timeout=180)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    expected = "kafka exited during start-up" if service == "kafka" else "elasticsearch failed to start (exit"
    assert expected in proc.stderr
    assert not (state / service / f"{service}.pid").exists(), "a failed start was recorded"
    stdout_log = (state / service / "logs" / "stdout.log").read_text()
    uid = pwd.getpwnam(SERVICE_USER).pw_uid
    if service == "kafka":
        assert f"fake java ran as uid {uid}" in stdout_log, stdout_log
    leftovers = [p for p in map(int, filter(str.isdigit, os.listdir("/proc"))) if str(java) in _cmdline(p)]
    assert not leftovers, f"the failed start left {leftovers} running"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _uids(pid: int) -> list[int]:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
    return [int(v) for v in line.split()[1:]]


def _writable_by(user: str, paths: list[Path]) -> list[str]:
    """The paths ``user`` could write (asked of the kernel, as that user)."""
    entry = pwd.getpwnam(user)
    proc = subprocess.run(
        ["/bin/sh", "-c", 'for p; do [ -w "$p" ] && echo "$p"; done; true', "sh", *map(str, paths)],
        user=entry.pw_uid,
        group=entry.pw_gid,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.split()


def test_root_start_runs_both_services_unprivileged_from_root_owned_files(
    tmp_path: Path, shared_dirs: list[Path]
) -> None:
    base = _shared_dir(0o755)
    shared_dirs.append(base)
    os.chmod(tmp_path, 0o700)
    state = (tmp_path / "state").resolve()
    # What the old code would have used: /var/tmp/quoteflow-<digest>, planted first by a local user.
    old = Path("/var/tmp") / f"quoteflow-{hashlib.sha256(str(state).encode()).hexdigest()[:10]}"
    shared_dirs.append(old)
    old_marker = old / "fake-elasticsearch-ran"
    victim = _victim(tmp_path)
    _as_user("nobody", PLANT_ES, str(old), str(old_marker), str(victim), ES_VERSION)
    # A cache the service user cannot read (a clone under /root, as CI may have): root copies the jars out.
    cache = tmp_path / "cache"
    shared_cache = ROOT / ".cache" / "services"
    assert (shared_cache / "dl" / f"elasticsearch-{ES_VERSION}.zip").exists() and (
        shared_cache / f"kafka-{KAFKA_VERSION}" / "libs" / ".complete"
    ).exists(), f"{shared_cache} lacks the Kafka jars or the ES zip: run `make services` once to fetch them"
    shutil.copytree(shared_cache / f"kafka-{KAFKA_VERSION}", cache / f"kafka-{KAFKA_VERSION}")
    (cache / "dl").mkdir()
    shutil.copy(shared_cache / "dl" / f"elasticsearch-{ES_VERSION}.zip", cache / "dl")
    env = _env(state, QUOTEFLOW_SERVICES_BASE=str(base), QUOTEFLOW_CACHE_DIR=str(cache))
    home = base / hashlib.sha256(str(state).encode()).hexdigest()[:12]
    es_uid = None
    try:
        proc = _services(env, "up", timeout=400)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        es_uid = pwd.getpwnam(SERVICE_USER).pw_uid
        pids = {}
        for name in ("kafka", "elasticsearch"):
            record = procs.read_pid_record(state / name / f"{name}.pid", owner=0)
            assert record, f"no trusted PID recorded for {name}"
            pids[name] = record[0]
            assert _uids(record[0]) == [es_uid] * 4, f"{name} does not run as {SERVICE_USER} alone"
            ports = {int(env["QUOTEFLOW_KAFKA_PORT"]), int(env["QUOTEFLOW_KAFKA_CONTROLLER_PORT"])}
            if name == "elasticsearch":
                ports = {int(env["QUOTEFLOW_ES_PORT"]), int(env["QUOTEFLOW_ES_TRANSPORT_PORT"])}
            listening = procs.listeners_of([record[0]])
            assert ports <= {port for _pid, _addr, port in listening}, listening
            assert all(procs.is_loopback(addr) for _pid, addr, _port in listening), listening

        kafka_args = Path(f"/proc/{pids['kafka']}/cmdline").read_bytes().decode().split("\0")
        libs = Path(kafka_args[kafka_args.index("-cp") + 1].removesuffix("/*"))
        es_args = Path(f"/proc/{pids['elasticsearch']}/cmdline").read_bytes().decode().split("\0")
        dist = Path(next(a for a in es_args if a.startswith("-Des.path.home=")).split("=", 1)[1])
        assert dist == base / f"elasticsearch-{ES_VERSION}", "the distribution is not the shared, root-owned one"
        root_owned = [
            home / "kafka",
            home / "kafka" / "server.properties",
            home / "kafka" / "log4j2.properties",
            libs,
            *libs.rglob("*"),
            home / "elasticsearch",
            dist,
            *dist.rglob("*"),
        ]
        assert libs == base / f"kafka-{KAFKA_VERSION}-libs", "Kafka does not run from root's copy of the jars"
        assert libs / f"kafka_2.13-{KAFKA_VERSION}.jar" in root_owned
        assert dist / "bin" / "elasticsearch" in root_owned
        for path in root_owned:
            st = os.lstat(path)
            assert st.st_uid == 0 and not st.st_mode & 0o022, f"{path} is not root's alone"
        assert _writable_by(SERVICE_USER, root_owned) == [], "the service user can change what it runs"
        for path in [home / "kafka" / "data", home / "kafka" / "logs", home / "elasticsearch" / "data"]:
            assert os.lstat(path).st_uid == es_uid, f"{path} is not owned by {SERVICE_USER}"
        assert os.lstat(home / "elasticsearch" / "logs").st_uid == es_uid
        assert not old_marker.exists(), "the old predictable folder's script ran"
        _assert_victim_untouched(victim)

        proc = _services(env, "down", timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for name, pid in pids.items():
            assert not procs.alive(pid), f"{name} still runs after down"
            assert not (state / name / f"{name}.pid").exists()

        # Even the service user itself cannot make root write through a link in the logs it owns.
        stdout_log = home / "elasticsearch" / "logs" / "stdout.log"
        _as_user(SERVICE_USER, 'rm -f "$1"; ln -s "$2" "$1"', str(stdout_log), str(victim))
        proc = _services(env, "up", "elasticsearch", timeout=120)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"refusing {stdout_log}: it is a symlink" in proc.stderr
        _assert_victim_untouched(victim)
        assert not (state / "elasticsearch" / "elasticsearch.pid").exists()
    finally:
        _services(env, "down", timeout=180)
