"""The library installs as the `quoteflow` package with a `quoteflow` command, from include/quoteflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("serve-feed", "produce", "setup", "index", "backfill", "reconcile", "dlq")


def test_pip_install_gives_the_package_and_its_command(tmp_path: Path) -> None:
    target = tmp_path / "site"
    # --no-deps: the dependencies are the venv's; what is checked is what the wheel itself carries.
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            target,
            ".",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    installed = target / "quoteflow"
    for module in ("__main__.py", "settings.py", "tradingview/client.py", "kafka/dlq.py", "liveview/web.py"):
        assert (installed / module).is_file(), f"the wheel lacks quoteflow/{module}"
    assert not (target / "include").exists(), "the package must install as quoteflow, not include.quoteflow"
    command = target / "bin" / "quoteflow"
    assert command.is_file(), "no `quoteflow` console script was installed"
    env = {**os.environ, "PYTHONPATH": str(target)}
    # Run from an empty folder so the work tree cannot be what gets imported.
    proc = subprocess.run(
        [sys.executable, str(command), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for name in COMMANDS:
        assert name in proc.stdout, f"`quoteflow --help` does not list {name}"
    where = subprocess.run(
        [sys.executable, "-c", "import quoteflow; print(quoteflow.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.strip().startswith(str(installed)), where.stdout + where.stderr
