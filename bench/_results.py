"""Merge one benchmark's figures into bench/results.json, keeping the other benchmarks' sections."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results.json")


def write_section(name: str, figures: dict[str, Any]) -> None:
    """Replace section ``name`` of bench/results.json with ``figures`` (plus when and where it ran)."""
    data: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[name] = {
        **figures,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
    }
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
