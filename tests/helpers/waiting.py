"""Polling with a deadline, for tests that wait on a running system."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(what: str, check: Callable[[], T], timeout: float, interval: float = 1.0) -> T:
    """Call ``check`` until it returns something truthy and return that; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"{what} not reached within {timeout:.0f} s (last: {last!r})")
