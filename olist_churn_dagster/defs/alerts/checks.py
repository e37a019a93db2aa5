"""Freshness expectations: the feed delivers the day's data, and the day's reference date
is scored, by the deadline. Evaluated from the Dagster instance alone (the raw tables'
as-of date, which partitions were scored), so they never open the warehouse and run in
any run, or in the freshness sensor."""

from collections.abc import Callable
from datetime import UTC, datetime, time

import dagster as dg

from olist_churn_dagster.defs.ml.assets import SCORES_KEY
from olist_churn_dagster.defs.raw.assets import loaded_as_of, raw_asset_key
from olist_churn_dagster.defs.settings import ChurnSettings
from olist_churn_dagster.lib.alerts import Freshness, feed_freshness, scores_freshness

FRESHNESS_CHECK = "scores_fresh"
FEED_CHECK = "feed_fresh"
FEED_KEY = raw_asset_key("orders")  # its materializations carry the source's as-of date


def current_freshness(
    instance: dg.DagsterInstance, deadline: time, now: datetime | None = None
) -> Freshness:
    scored = instance.get_materialized_partitions(SCORES_KEY)
    delivered = loaded_as_of(instance)
    return scores_freshness(now or datetime.now(UTC), deadline, sorted(scored), delivered)


def current_feed_freshness(
    instance: dg.DagsterInstance, deadline: time, now: datetime | None = None
) -> Freshness:
    return feed_freshness(now or datetime.now(UTC), deadline, loaded_as_of(instance))


def freshness_metadata(freshness: Freshness, deadline: time) -> dict[str, dg.MetadataValue]:
    behind = freshness.days_behind
    newest = "newest_delivered_date" if freshness.feed else "newest_scored_date"
    return {
        "expected_reference_date": dg.MetadataValue.text(freshness.expected.isoformat()),
        newest: dg.MetadataValue.text(str(freshness.newest_scored or "none")),
        "days_behind": dg.MetadataValue.int(behind) if behind is not None else "n/a",
        "deadline_utc": dg.MetadataValue.text(deadline.isoformat()),
    }


@dg.asset_check(
    asset=SCORES_KEY,
    name=FRESHNESS_CHECK,
    description="Scores for today's reference date exist by OLIST_CHURN_SCORES_DEADLINE_UTC "
    "(04:00 UTC by default; before it, yesterday's), or for the feed's newest date when the "
    "feed is late (that is feed_fresh's failure). Also evaluated every few minutes by the "
    "scores_freshness sensor, which raises an alert when it fails.",
)
def scores_fresh(
    context: dg.AssetCheckExecutionContext, settings: ChurnSettings
) -> dg.AssetCheckResult:
    return _result(context, settings, current_freshness, dg.AssetCheckSeverity.ERROR)


def _result(
    context: dg.AssetCheckExecutionContext,
    settings: ChurnSettings,
    read: Callable[[dg.DagsterInstance, time], Freshness],
    severity: dg.AssetCheckSeverity,
) -> dg.AssetCheckResult:
    """The check's result from the freshness `read` reports at the configured deadline."""
    deadline = settings.to_settings().scores_deadline_utc
    freshness = read(context.instance, deadline)
    return dg.AssetCheckResult(
        passed=freshness.passed,
        severity=severity,
        description=freshness.describe(),
        metadata=freshness_metadata(freshness, deadline),
    )


@dg.asset_check(
    asset=FEED_KEY,
    name=FEED_CHECK,
    description="The raw tables hold the source's data as of today's reference date by "
    "OLIST_CHURN_SCORES_DEADLINE_UTC (before it, yesterday's): a warning that the feed is "
    "late. Also evaluated by the scores_freshness sensor, which alerts once per late date.",
)
def feed_fresh(
    context: dg.AssetCheckExecutionContext, settings: ChurnSettings
) -> dg.AssetCheckResult:
    return _result(context, settings, current_feed_freshness, dg.AssetCheckSeverity.WARN)
