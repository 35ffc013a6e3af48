"""Upkeep of what the pipeline accumulates: indices past retention, and how old the dead letters are.

Index names carry their period: quotes indices are daily, ``<prefix>YYYY.MM.DD``; bars and gaps
indices are monthly, ``<prefix>YYYY.MM``. An index is *past retention* when its whole period ended
at or before ``today - retention_days`` (UTC dates): with 30 days on 2026-12-02 the cutoff is
2026-11-02, so ``quotes-…-2026.11.01`` goes and ``…-2026.11.02`` stays, and ``bars-…-2026.10`` (ended
2026-11-01) goes while ``bars-…-2026.11`` stays until 2026-12-31. Today's index and the open month's
index are never past retention (``retention_days`` is at least 1), nor is one dated in the future.
:func:`plan_retention` decides that from the names and today's date alone.

Two ways to act on it. Where the cluster has index lifecycle management (``GET _ilm/status``
answers), the ``ilm`` path puts one delete-only policy and attaches it to each index, with the
index's ``origination_date`` set to the end of its period, so ILM deletes it on the same day this
module would. Elsewhere — the minimal distribution has no ILM — the ``delete`` path deletes the
indices by exact name. Either way the summary says which path ran; ILM is used, never required.

The dead-letter report reads the whole DLQ topic (it is small: only bad records land there) and
gives, per reason, how many letters there are and the oldest and newest one's age, beside the
topic's retention: a letter older than that is about to be gone for good.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from quoteflow.elastic.documents import check_index_prefix
from quoteflow.settings import ConfigError

logger = logging.getLogger(__name__)

DAY = "day"
MONTH = "month"
PERIODS = (DAY, MONTH)
ILM_POLICY = "quoteflow-retention"
PATH_DELETE = "delete"
PATH_ILM = "ilm"
# Index names per delete request: keeps the request line far below Elasticsearch's 4 KB URL limit.
DELETE_BATCH = 40
DAY_MS = 86_400_000
_DAY_RE = re.compile(r"(\d{4})\.(\d{2})\.(\d{2})")
_MONTH_RE = re.compile(r"(\d{4})\.(\d{2})")


@dataclass(frozen=True)
class IndexSeries:
    """Indices named ``<prefix><period>``: daily (``YYYY.MM.DD``) or monthly (``YYYY.MM``)."""

    prefix: str
    period: str

    def __post_init__(self) -> None:
        check_index_prefix(self.prefix)
        if self.period not in PERIODS:
            raise ConfigError(f"index period must be one of {PERIODS}, got {self.period!r}")

    def span(self, name: str) -> tuple[date, date] | None:
        """``[first day, day after the last)`` of the period index ``name`` holds; ``None`` if not one of ours."""
        if not name.startswith(self.prefix):
            return None
        rest = name[len(self.prefix) :]
        try:
            if self.period == DAY:
                if not (m := _DAY_RE.fullmatch(rest)):
                    return None
                first = date(int(m[1]), int(m[2]), int(m[3]))
                return first, first + timedelta(days=1)
            if not (m := _MONTH_RE.fullmatch(rest)):
                return None
            first = date(int(m[1]), int(m[2]), 1)
        except ValueError:  # 2026.13.01, 2026.02.30: shaped like a date, but none
            return None
        return first, date(first.year + first.month // 12, first.month % 12 + 1, 1)


def pipeline_series(quotes_prefix: str, bars_prefix: str, gaps_prefix: str) -> list[IndexSeries]:
    """The pipeline's index series: daily quotes, monthly bars and gaps."""
    return [IndexSeries(quotes_prefix, DAY), IndexSeries(bars_prefix, MONTH), IndexSeries(gaps_prefix, MONTH)]


@dataclass(frozen=True)
class RetentionPlan:
    """Which indices are past retention on ``today``, which stay, and which names are not ours to judge."""

    today: date
    retention_days: int
    cutoff: date
    past: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    unrecognised: list[str] = field(default_factory=list)
    ends: dict[str, date] = field(default_factory=dict)


def check_retention_days(retention_days: int) -> int:
    """``retention_days`` if at least 1 (0 would delete yesterday's index while late data still arrives)."""
    if isinstance(retention_days, bool) or not isinstance(retention_days, int) or retention_days < 1:
        raise ConfigError(f"retention_days must be a whole number of days >= 1, got {retention_days!r}")
    return retention_days


def plan_retention(
    names: Iterable[str], series: Sequence[IndexSeries], today: date, retention_days: int
) -> RetentionPlan:
    """Split index ``names`` into past retention and kept, by their period's end against ``today - retention_days``.

    A name that starts with a series' prefix but is not ``<prefix><period>`` (another tool's index, a
    date that does not exist) is listed as unrecognised and never deleted.
    """
    cutoff = today - timedelta(days=check_retention_days(retention_days))
    plan = RetentionPlan(today=today, retention_days=retention_days, cutoff=cutoff)
    for name in sorted(set(names)):
        spans = [s for s in (one.span(name) for one in series) if s is not None]
        if not spans:
            plan.unrecognised.append(name)
            continue
        end = spans[0][1]
        plan.ends[name] = end
        (plan.past if end <= cutoff else plan.kept).append(name)
    return plan


# ------------------------------------------------------------------ Elasticsearch side


def _patterns(series: Sequence[IndexSeries]) -> str:
    return ",".join(f"{s.prefix}*" for s in series)


def index_settings(es: Any, series: Sequence[IndexSeries]) -> dict[str, dict[str, Any]]:
    """Every index (open or closed) under the series' prefixes → its ``index.lifecycle.*`` settings (flat)."""
    found = es.indices.get_settings(
        index=_patterns(series),
        name="index.uuid,index.lifecycle.*",
        expand_wildcards="open,closed",
        allow_no_indices=True,
        ignore_unavailable=True,
    )
    out: dict[str, dict[str, Any]] = {}
    for name, body in dict(found).items():
        lifecycle = body.get("settings", {}).get("index", {}).get("lifecycle", {})
        out[name] = {f"index.lifecycle.{k}": str(v) for k, v in lifecycle.items()}
    return out


def ilm_status(es: Any) -> tuple[bool, str]:
    """Whether the cluster has index lifecycle management, and what said so (``GET _ilm/status``)."""
    from elasticsearch import ApiError

    try:
        answer = es.ilm.get_status()
    except ApiError as exc:
        if exc.status_code >= 500:
            raise
        # The minimal distribution: 400 "no handler found for uri [/_ilm/status]"; 403: no privilege to use it.
        return False, f"GET _ilm/status answered {exc.status_code} ({str(exc.message)[:120]})"
    return True, f"GET _ilm/status: operation_mode {answer.get('operation_mode')}"


def ilm_policy(retention_days: int) -> dict[str, Any]:
    """The delete-only lifecycle policy: delete ``retention_days`` after the index's origination date."""
    return {
        "phases": {
            "hot": {"min_age": "0ms", "actions": {}},
            "delete": {"min_age": f"{check_retention_days(retention_days)}d", "actions": {"delete": {}}},
        },
        "_meta": {"managed_by": "quoteflow", "origination_date": "end of the index's day or month"},
    }


def ilm_settings(end: date, policy: str = ILM_POLICY) -> dict[str, str]:
    """An index's lifecycle settings: the policy, counted from the end of its period (epoch ms, UTC)."""
    origin_ms = int(datetime(end.year, end.month, end.day, tzinfo=UTC).timestamp() * 1000)
    return {"index.lifecycle.name": policy, "index.lifecycle.origination_date": str(origin_ms)}


def _delete(es: Any, names: Sequence[str]) -> None:
    for i in range(0, len(names), DELETE_BATCH):
        batch = names[i : i + DELETE_BATCH]
        # Exact names only (no wildcard can widen it); one deleted meanwhile by someone else is no error.
        es.indices.delete(index=",".join(batch), ignore_unavailable=True, allow_no_indices=True)
        logger.info("deleted %s index(es) past retention: %s", len(batch), ", ".join(batch))


def _defer_to_ilm(
    es: Any, plan: RetentionPlan, current: Mapping[str, Mapping[str, Any]], dry_run: bool
) -> dict[str, Any]:
    wanted_policy = ilm_policy(plan.retention_days)
    policy_changed = True
    found = es.options(ignore_status=404).ilm.get_lifecycle(name=ILM_POLICY).body
    if ILM_POLICY in found:
        policy_changed = found[ILM_POLICY].get("policy", {}).get("phases") != wanted_policy["phases"]
    if policy_changed and not dry_run:
        es.ilm.put_lifecycle(name=ILM_POLICY, policy=wanted_policy)
        logger.info(
            "lifecycle policy %s put: delete %s days after each index's period", ILM_POLICY, plan.retention_days
        )
    attach = []
    for name in plan.past + plan.kept:
        wanted = ilm_settings(plan.ends[name])
        if any(current.get(name, {}).get(k) != v for k, v in wanted.items()):
            attach.append(name)
            if not dry_run:
                es.indices.put_settings(index=name, settings=wanted)
    if attach and not dry_run:
        logger.info("lifecycle policy %s attached to %s index(es)", ILM_POLICY, len(attach))
    return {
        "policy": ILM_POLICY,
        "policy_changed": policy_changed,
        ("would_attach" if dry_run else "attached"): attach,
        "due": plan.past,  # ILM deletes these on its next check
    }


def apply_retention(
    es: Any,
    series: Sequence[IndexSeries],
    *,
    retention_days: int = 30,
    dry_run: bool = False,
    prefer_ilm: bool = True,
    today: date | None = None,
) -> dict[str, Any]:
    """Delete the indices past retention, or hand them to ILM where the cluster has it; the summary.

    ``path`` says which ran (``delete`` or ``ilm``); with ``dry_run`` nothing changes and the summary
    lists what would be deleted (or attached). ``today`` defaults to the UTC date.
    """
    check_retention_days(retention_days)
    today = today or datetime.now(UTC).date()
    current = index_settings(es, series)
    plan = plan_retention(current, series, today, retention_days)
    available, detail = ilm_status(es) if prefer_ilm else (False, "ILM not wanted (prefer_ilm off)")
    summary: dict[str, Any] = {
        "path": PATH_ILM if available else PATH_DELETE,
        "ilm": {"available": available, "detail": detail},
        "dry_run": dry_run,
        "today": today.isoformat(),
        "retention_days": retention_days,
        "cutoff": plan.cutoff.isoformat(),
        "patterns": _patterns(series),
        "past_retention": plan.past,
        "kept": plan.kept,
        "unrecognised": plan.unrecognised,
        "deleted": [],
    }
    if available:
        summary.update(_defer_to_ilm(es, plan, current, dry_run))
    elif dry_run:
        summary["would_delete"] = plan.past
    else:
        _delete(es, plan.past)
        summary["deleted"] = plan.past
    logger.info(
        "retention (%s path%s): %s index(es) past %s days (cutoff %s), %s kept, %s unrecognised",
        summary["path"],
        ", dry run" if dry_run else "",
        len(plan.past),
        retention_days,
        plan.cutoff,
        len(plan.kept),
        len(plan.unrecognised),
    )
    return summary


# ------------------------------------------------------------------ dead-letter ages


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _age_days(now_ms: int, ms: int) -> float:
    return round((now_ms - ms) / DAY_MS, 2)


def _retention_days(config: Mapping[str, Any], topic: str) -> float | None:
    from quoteflow.kafka.admin import describe_topic_config
    from quoteflow.kafka.clients import admin_client

    value = describe_topic_config(admin_client(config), topic).get("retention.ms")
    if value is None or int(value) < 0:
        return None  # kept forever
    return round(int(value) / DAY_MS, 2)


def dlq_age_report(config: Mapping[str, Any], dlq_topic: str, *, now_ms: int | None = None) -> dict[str, Any]:
    """Per ``error.reason``: how many dead letters, and the oldest and newest one's time and age in days.

    Ages are from each letter's Kafka timestamp (when it was dead-lettered). ``retention_days`` is the
    topic's ``retention.ms`` (``None``: kept forever); ``by_origin`` counts letters per origin topic.
    """
    from quoteflow.kafka import clients
    from quoteflow.kafka.dlq import to_dead_letter
    from quoteflow.kafka.reader import PartitionRange, read_ranges, topic_partitions, watermarks

    now = int(time.time() * 1000) if now_ms is None else now_ms
    reasons: dict[str, dict[str, Any]] = {}
    origins: dict[str, int] = {}
    with clients.consumer(config, "quoteflow-dlq-report") as reader:
        ranges = [
            PartitionRange(dlq_topic, p, *watermarks(reader, dlq_topic, p)) for p in topic_partitions(reader, dlq_topic)
        ]
        for batch in read_ranges(reader, ranges):
            for msg in batch:
                letter = to_dead_letter(msg)
                ts = msg.timestamp()[1]
                entry = reasons.setdefault(letter.reason or "(none)", {"count": 0, "oldest_ms": ts, "newest_ms": ts})
                entry["count"] += 1
                entry["oldest_ms"] = min(entry["oldest_ms"], ts)
                entry["newest_ms"] = max(entry["newest_ms"], ts)
                origins[letter.origin_topic] = origins.get(letter.origin_topic, 0) + 1
    by_reason = {
        reason: {
            "count": e["count"],
            "oldest": _iso(e["oldest_ms"]),
            "newest": _iso(e["newest_ms"]),
            "oldest_age_days": _age_days(now, e["oldest_ms"]),
            "newest_age_days": _age_days(now, e["newest_ms"]),
        }
        for reason, e in sorted(reasons.items())
    }
    oldest = min((e["oldest_ms"] for e in reasons.values()), default=None)
    report = {
        "topic": dlq_topic,
        "dead_letters": sum(e["count"] for e in reasons.values()),
        "oldest_age_days": _age_days(now, oldest) if oldest is not None else None,
        "retention_days": _retention_days(config, dlq_topic),
        "by_reason": by_reason,
        "by_origin": dict(sorted(origins.items())),
        "reported_at": _iso(now),
    }
    logger.info(
        "dead letters in %s: %s, oldest %s days (retention %s days), by reason %s",
        dlq_topic,
        report["dead_letters"],
        report["oldest_age_days"],
        report["retention_days"],
        {r: e["count"] for r, e in by_reason.items()},
    )
    return report
