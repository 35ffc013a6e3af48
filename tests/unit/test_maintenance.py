"""Index retention as a pure function of names and today's date; the ILM settings; the CLI's flags."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from quoteflow.maintenance import (
    DAY,
    MONTH,
    IndexSeries,
    ilm_policy,
    ilm_settings,
    pipeline_series,
    plan_retention,
)
from quoteflow.settings import ConfigError

Q, B, G = "quotes-tradingview-", "bars-tradingview-", "gaps-tradingview-"
SERIES = pipeline_series(Q, B, G)


def test_daily_and_monthly_indices_go_once_their_whole_period_is_older_than_retention() -> None:
    names = [
        f"{Q}2026.10.15",
        f"{Q}2026.11.01",  # ended 11-02 = the cutoff: past
        f"{Q}2026.11.02",  # ends 11-03: kept
        f"{Q}2026.12.02",  # today
        f"{Q}2026.12.09",  # dated in the future (a producer clock ahead): kept
        f"{B}2026.09",
        f"{B}2026.10",  # ended 11-01 <= cutoff: past
        f"{B}2026.11",  # ends 12-01, after the cutoff: kept
        f"{G}2026.10",
        f"{G}2026.12",  # the open month
    ]
    plan = plan_retention(names, SERIES, date(2026, 12, 2), 30)
    assert plan.cutoff == date(2026, 11, 2)
    assert plan.past == [f"{B}2026.09", f"{B}2026.10", f"{G}2026.10", f"{Q}2026.10.15", f"{Q}2026.11.01"]
    assert plan.kept == [f"{B}2026.11", f"{G}2026.12", f"{Q}2026.11.02", f"{Q}2026.12.02", f"{Q}2026.12.09"]
    assert plan.unrecognised == []


def test_names_that_are_not_prefix_plus_period_are_never_judged() -> None:
    odd = [
        f"{Q}2026.02.30",  # no such day
        f"{Q}2020.01.01-restored",
        f"{Q}2020.01",  # a month where days are expected
        f"{B}2020.01.01",  # a day where months are expected
        f"{B}2020.13",
        f"{G}old",
    ]
    plan = plan_retention(odd, SERIES, date(2026, 12, 2), 30)
    assert plan.past == [] and plan.kept == []
    assert plan.unrecognised == sorted(odd)


def test_month_boundaries() -> None:
    # New Year's Day with one day of retention: December ended today, so it is less than a day old.
    plan = plan_retention([f"{B}2025.11", f"{B}2025.12", f"{B}2026.01"], SERIES, date(2026, 1, 1), 1)
    assert plan.past == [f"{B}2025.11"] and plan.kept == [f"{B}2025.12", f"{B}2026.01"]
    plan = plan_retention([f"{B}2025.12", f"{Q}2025.12.31", f"{Q}2026.01.01"], SERIES, date(2026, 1, 2), 1)
    assert plan.past == [f"{B}2025.12", f"{Q}2025.12.31"] and plan.kept == [f"{Q}2026.01.01"]


def test_todays_and_the_open_months_index_are_never_past_retention() -> None:
    first = date(2026, 1, 1)
    for offset in range(0, 400, 3):
        today = first + timedelta(days=offset)
        names = [f"{Q}{today:%Y.%m.%d}", f"{B}{today:%Y.%m}", f"{G}{today:%Y.%m}"]
        names += [f"{Q}{today - timedelta(days=n):%Y.%m.%d}" for n in range(0, 3)]
        for retention_days in (1, 2, 7, 30, 31):
            plan = plan_retention(names, SERIES, today, retention_days)
            assert not {f"{Q}{today:%Y.%m.%d}", f"{B}{today:%Y.%m}", f"{G}{today:%Y.%m}"} & set(plan.past), (
                today,
                retention_days,
                plan.past,
            )
            # Whole days: an index of exactly retention_days + 1 days before today is past, one day newer is not.
            older = f"{Q}{today - timedelta(days=retention_days + 1):%Y.%m.%d}"
            newer = f"{Q}{today - timedelta(days=retention_days):%Y.%m.%d}"
            plan = plan_retention([older, newer], SERIES, today, retention_days)
            assert (plan.past, plan.kept) == ([older], [newer]), (today, retention_days)


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "30"])
def test_retention_days_must_be_a_positive_whole_number(bad) -> None:
    with pytest.raises(ConfigError, match="retention_days must be a whole number of days >= 1"):
        plan_retention([], SERIES, date(2026, 12, 2), bad)


def test_series_refuse_unusable_prefixes_and_periods() -> None:
    with pytest.raises(ConfigError, match="index prefix"):
        IndexSeries("quotes-*", DAY)
    with pytest.raises(ConfigError, match="index prefix"):
        IndexSeries("", MONTH)
    with pytest.raises(ConfigError, match="index period must be one of"):
        IndexSeries(Q, "week")


def test_ilm_counts_from_the_end_of_the_period() -> None:
    settings = ilm_settings(date(2026, 12, 1))
    assert settings["index.lifecycle.name"] == "quoteflow-retention"
    origin = datetime.fromtimestamp(int(settings["index.lifecycle.origination_date"]) / 1000, UTC)
    assert origin == datetime(2026, 12, 1, tzinfo=UTC)
    assert ilm_policy(30)["phases"]["delete"] == {"min_age": "30d", "actions": {"delete": {}}}


def test_cli_parses_the_maintenance_command() -> None:
    from quoteflow.cli import build_parser

    args = build_parser().parse_args(
        ["maintenance", "indices", "--dry-run", "--retention-days", "9", "--bars-index-prefix", "bars-x-"]
    )
    assert (args.action, args.dry_run, args.retention_days, args.bars_index_prefix) == ("indices", True, 9, "bars-x-")
    assert args.no_ilm is False and args.gaps_index_prefix == G
