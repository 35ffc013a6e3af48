"""CI runs the linters before the suite, and `make lint` really fails on a finding."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _commands(script: Path) -> list[str]:
    lines = []
    for raw in script.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def test_ci_runs_lint_before_the_suite() -> None:
    syntax = subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")], capture_output=True, text=True)
    assert syntax.returncode == 0, f".ci/run is not valid bash: {syntax.stderr}"
    lines = _commands(ROOT / ".ci" / "run")
    assert "make lint" in lines, ".ci/run must run `make lint`"
    assert "make test" in lines, ".ci/run must run `make test`"
    assert lines.index("make lint") < lines.index("make test")
    assert lines[0].startswith("set -euo pipefail") or "set -euo pipefail" in lines, "a failing lint must stop CI"


def _lint_copy(tmp_path: Path) -> Path:
    """The repository's lint inputs in a scratch folder, sharing the real virtualenv."""
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("Makefile", "pyproject.toml", "requirements.txt", "requirements-dev.txt", "constraints.txt"):
        shutil.copy2(ROOT / name, copy / name)
    shutil.copytree(ROOT / "include", copy / "include", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / ".venv").symlink_to(ROOT / ".venv")
    return copy


@pytest.mark.parametrize(
    ("planted", "expect"),
    [
        ("import os\n", "F401"),  # ruff: an unused import (formatted, so only the lint rule fires)
        ("def half(x: int) -> int:\n    return x / 2\n", "Incompatible return value type"),  # mypy
    ],
    ids=["ruff", "mypy"],
)
def test_make_lint_fails_on_a_planted_finding(tmp_path: Path, planted: str, expect: str) -> None:
    if not (ROOT / ".venv" / ".installed").exists():
        pytest.fail("no .venv: run `make venv` first")
    copy = _lint_copy(tmp_path)
    clean = subprocess.run(["make", "-s", "lint"], cwd=copy, capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, f"the copy should lint clean before the plant:\n{clean.stdout}{clean.stderr}"
    (copy / "include" / "quoteflow" / "planted.py").write_text(f'"""Planted."""\n\n\n{planted}')
    env = {**os.environ, "MYPY_CACHE_DIR": str(tmp_path / "mypy-cache")}
    proc = subprocess.run(["make", "-s", "lint"], cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, f"make lint passed with a planted finding:\n{proc.stdout}{proc.stderr}"
    assert expect in proc.stdout + proc.stderr
    assert "planted.py" in proc.stdout + proc.stderr


def test_ci_installs_what_a_fresh_machine_lacks(tmp_path: Path) -> None:
    """On a machine without them, .ci/run asks apt for the tools the suite starts (redis-server included)."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    calls = tmp_path / "calls"
    for name in ("apt-get", "make"):
        (stubs / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n')
        (stubs / name).chmod(0o755)
    (stubs / "dirname").symlink_to(shutil.which("dirname") or "/usr/bin/dirname")
    # Only the stubs on PATH: every `command -v` check fails, as on a bare machine.
    run = subprocess.run(
        ["/bin/bash", str(ROOT / ".ci" / "run")], env={"PATH": str(stubs)}, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    lines = calls.read_text().splitlines()
    (install,) = [line for line in lines if line.startswith("apt-get install")]
    wanted = {"maven", "unzip", "openjdk-17-jdk-headless", "nodejs", "npm", "chromium", "redis-server"}
    assert wanted <= set(install.split()), install
    assert lines[-2:] == ["make lint", "make test"]
