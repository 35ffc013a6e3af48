"""quoteflow.shards: a deterministic split, spaced and jittered start delays, refusals that name the fix,
a stop-aware wait and one recording file per shard."""

from __future__ import annotations

import random
import threading
import time

import pytest

from quoteflow import shards
from quoteflow.settings import ConfigError


def symbols(n: int) -> list[str]:
    return [f"SYNTH:S{i:04d}" for i in range(n)]


@pytest.mark.parametrize(("n", "size", "sizes"), [(1, 500, [1]), (500, 500, [500]), (501, 500, [251, 250]),
                                                  (5000, 500, [500] * 10), (7, 3, [3, 2, 2])])  # fmt: skip
def test_split_gives_ceil_n_over_size_shards_of_near_equal_size_in_order(n, size, sizes):
    parts = shards.split(symbols(n), size)
    assert [len(p) for p in parts] == sizes
    assert [s for p in parts for s in p] == symbols(n)  # every symbol once, in the given order
    assert max(len(p) for p in parts) <= size


def test_split_is_deterministic_and_drops_duplicates_keeping_the_first():
    given = ["A:X", "B:Y", "A:X", "C:Z", "B:Y"]
    assert shards.split(given, 2) == shards.split(list(given), 2) == [["A:X", "B:Y"], ["C:Z"]]


@pytest.mark.parametrize("bad", [0, -1, shards.MAX_SHARD_SIZE + 1, 2.5, "500", True, None])
def test_a_bad_shard_size_is_refused_naming_the_param(bad):
    with pytest.raises(ConfigError, match="shard_size must be a whole number.*set shard_size"):
        shards.split(symbols(3), bad)


def test_plan_spaces_shards_with_jitter_and_shard_0_starts_at_once():
    plan = shards.plan(symbols(10), 2, spacing_s=4.0, rng=random.Random(7))
    assert [s.shard for s in plan] == ["0", "1", "2", "3", "4"] and {s.count for s in plan} == {5}
    assert plan[0].start_delay_s == 0.0
    for s in plan[1:]:
        assert s.index * 4.0 <= s.start_delay_s < s.index * 4.0 + 4.0 * shards.JITTER_FRACTION
    gaps = [b.start_delay_s - a.start_delay_s for a, b in zip(plan, plan[1:], strict=False)]
    assert min(gaps) > 4.0 * (1 - shards.JITTER_FRACTION) - 1e-9  # never two connects in one burst
    jitters = {round(s.start_delay_s - s.index * 4.0, 3) for s in plan[1:]}
    assert len(jitters) > 1  # jittered, not a fixed grid
    assert plan[3].as_dict() == {"shard": "3", "index": 3, "count": 5, "symbols": symbols(10)[6:8],
                                 "start_delay_s": plan[3].start_delay_s}  # fmt: skip


def test_plan_with_zero_spacing_starts_every_shard_at_once():
    assert {s.start_delay_s for s in shards.plan(symbols(6), 2, spacing_s=0)} == {0.0}


def test_a_plan_whose_last_shard_would_wait_most_of_the_run_is_refused_naming_the_fixes():
    with pytest.raises(ConfigError) as caught:
        shards.plan(symbols(30), 1, spacing_s=5.0, max_seconds=60.0)
    message = str(caught.value)
    assert "30 shards" in message
    assert "raise shard_size, lower connect_spacing_seconds or raise max_runtime_minutes" in message
    assert len(shards.plan(symbols(30), 10, spacing_s=5.0, max_seconds=60.0)) == 3  # the fix works


@pytest.mark.parametrize("bad", [-1, shards.MAX_CONNECT_SPACING_S + 1, "5"])
def test_a_bad_spacing_is_refused_naming_the_param(bad):
    with pytest.raises(ConfigError, match="connect"):
        shards.plan(symbols(3), 1, spacing_s=bad)


def test_wait_to_start_waits_and_wakes_at_once_on_stop():
    stop = threading.Event()
    started = time.monotonic()
    assert shards.wait_to_start(0.3, stop) is True
    assert time.monotonic() - started >= 0.3
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert shards.wait_to_start(30.0, stop) is False
    assert time.monotonic() - started < 5.0  # on_kill's budget


def test_each_shard_records_into_its_own_file(tmp_path):
    path = tmp_path / "quotes.jsonl"
    assert shards.record_path(path, None) == str(path)
    assert shards.record_path(None, "2") is None
    paths = {shards.record_path(path, s) for s in ("0", "1", "2")}
    assert paths == {str(tmp_path / f"quotes.shard-{s}.jsonl") for s in ("0", "1", "2")}
