"""Stop and start the real local services from a test, through the same script developers use."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "scripts" / "services"


def _run(command: str, name: str, timeout: float) -> None:
    proc = subprocess.run([str(SERVICES), command, name], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/services {command} {name} failed:\n{proc.stdout}{proc.stderr}")


def stop_service(name: str, timeout: float = 120) -> None:
    """Stop ``kafka`` or ``elasticsearch`` (recorded PID only)."""
    _run("down", name, timeout)


def start_service(name: str, timeout: float = 300) -> None:
    """Start ``kafka`` or ``elasticsearch`` and wait until it answers."""
    _run("up", name, timeout)


def service_is_up(name: str) -> bool:
    """True if the service answers now."""
    return subprocess.run([str(SERVICES), "status", name], capture_output=True).returncode == 0
