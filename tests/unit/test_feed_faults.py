"""Feed-wide faults of the local feed over real sockets: outages (scheduled, control file) and TradingView's 429.

An outage cuts every open connection and answers upgrades 503 for its duration, while the walk goes
on, so history fetched afterwards covers the outage with no hole. The handshake limit answers 429
with ``Retry-After`` beyond n upgrades per window; spaced connects stay under it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websocket

from quoteflow.tradingview.feed.config import FeedServerError, parse_fault, parse_handshake_limit
from quoteflow.tradingview.feed.faults import ControlFile
from tests.unit.test_feed_chart_protocol import SOL, Raw, bars_of, feed, free_port, history


def _status(url: str) -> tuple[int, dict[str, str]]:
    """The HTTP status of an upgrade attempt (101 when it went through) and the response headers."""
    try:
        ws = websocket.create_connection(url, timeout=3)
    except websocket.WebSocketBadStatusException as exc:
        return exc.status_code, {k.lower(): v for k, v in (exc.resp_headers or {}).items()}
    ws.close()
    return 101, {}


def _cut(client: Raw, timeout: float = 5.0) -> bool:
    """True once the server has cut the connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.recv()
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            return True
    return False


def test_a_scheduled_outage_cuts_everyone_refuses_upgrades_and_history_afterwards_covers_it():
    # Feed time 30x: the 3 s outage is 1.5 feed minutes.
    with feed(outages=((1.0, 3.0),), clock_speed=30.0) as (server, connect):
        clients = [connect(), connect()]
        before = bars_of(history(clients[0], "cs_beforeabcdef", SOL, "1", 5))
        assert all(_cut(c) for c in clients)
        during = _status(server.url)
        while server.outages.active(time.monotonic()):
            time.sleep(0.1)
        after_client = connect()
        after = bars_of(history(after_client, "cs_afterabcdefg", SOL, "1", 10))
        stats = server.stats
    assert during == (503, during[1])
    assert stats.outage_drops == 2 and stats.refused_outage >= 1
    times = [r["v"][0] for r in after]
    assert all(b - a == 60 for a, b in zip(times, times[1:], strict=False))  # no hole
    assert times[-1] - before[-1]["v"][0] >= 60  # and the outage's minutes are in it
    by_time = {r["v"][0]: r["v"] for r in after}
    assert all(by_time[r["v"][0]] == r["v"] for r in before[:-1] if r["v"][0] in by_time)


def test_the_control_file_starts_and_ends_an_outage_only_when_it_is_0600(tmp_path: Path):
    control = tmp_path / "feed.control"
    control.write_text("")
    os.chmod(control, 0o644)
    with feed(control_file=control) as (server, connect):
        client = connect()
        with control.open("a") as f:
            f.write("outage 30\n")
        time.sleep(0.8)
        assert server.stats.outage_drops == 0  # group/other-readable: refused, logged
        assert _status(server.url)[0] == 101
        os.chmod(control, 0o600)
        with control.open("a") as f:
            f.write("outage 30\n")
        assert _cut(client)
        assert _status(server.url)[0] == 503
        with control.open("a") as f:
            f.write("outage-end\n")
        time.sleep(0.8)
        assert _status(server.url)[0] == 101
        assert server.stats.outage_drops == 1


def test_the_in_process_api_starts_an_outage():
    with feed() as (server, connect):
        client = connect()
        server.start_outage(0.6)
        assert _cut(client)
        assert _status(server.url)[0] == 503
        time.sleep(0.8)
        assert _status(server.url)[0] == 101


def test_handshakes_beyond_the_limit_get_429_and_spaced_ones_do_not():
    with feed(handshake_limit=(2, 1.0)) as (server, _):
        burst = [_status(server.url) for _ in range(3)]
        assert [s for s, _ in burst] == [101, 101, 429]
        assert burst[2][1]["retry-after"] == "1"
        time.sleep(1.05)
        spaced = []
        for _ in range(4):
            spaced.append(_status(server.url)[0])
            time.sleep(0.55)
        refused = server.stats.refused_rate_limited
    assert spaced == [101, 101, 101, 101]
    assert refused == 1


def test_fault_flags_parse_and_refuse_what_they_cannot_read():
    assert parse_fault("outage:60:150") == {"outages": ((60.0, 150.0),)}
    assert parse_fault("symbol-error:BINANCE:SOLUSDT") == {"symbol_errors": ("BINANCE:SOLUSDT",)}
    assert parse_fault("not-entitled:60,1D") == {"not_entitled": ("60", "1D")}
    assert parse_handshake_limit("5/10") == (5, 10.0)
    with pytest.raises(FeedServerError, match="outage:<after_s>:<duration_s>"):
        parse_fault("outage:soon")
    with pytest.raises(FeedServerError, match="unknown fault"):
        parse_fault("meteor:1")
    with pytest.raises(FeedServerError, match="<n>/<seconds>"):
        parse_handshake_limit("lots")


def test_serve_feed_takes_the_fault_flags(tmp_path: Path):
    port = free_port()
    cmd = [sys.executable, "-m", "quoteflow", "serve-feed", "--port", str(port), "--synthetic", "--symbols", "3",
           "--fault", "outage:1:2", "--handshake-limit", "3/1", "--fault", "not-entitled:60"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = json.loads(proc.stdout.readline())["listening"]
        assert _status(url)[0] == 101
        time.sleep(1.3)
        assert _status(url)[0] == 503
        time.sleep(2.0)
        assert [_status(url)[0] for _ in range(4)] == [101, 101, 101, 429]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["refused_outage"] == 1 and summary["refused_rate_limited"] == 1
    bad = subprocess.run(
        [*cmd[:5], str(free_port()), "--synthetic", "--fault", "outage:x"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "outage:<after_s>:<duration_s>" in bad.stderr


def test_the_control_file_runs_each_appended_line_once_and_refuses_links(tmp_path: Path, caplog):
    target = tmp_path / "real.control"
    target.write_text("outage 5\n")
    os.chmod(target, 0o600)
    control = ControlFile(target)
    assert control.poll() == [["outage", "5"]]
    assert control.poll() == []  # run once
    with target.open("a") as f:
        f.write("\noutage-end\n")
    assert control.poll() == [["outage-end"]]
    target.write_text("outage 1\n")  # truncated: the count starts over
    assert control.poll() == [["outage", "1"]]
    link = tmp_path / "link.control"
    link.symlink_to(target)
    assert ControlFile(link).poll() == []
    assert "refused" in caplog.text and "chmod 600" in caplog.text
