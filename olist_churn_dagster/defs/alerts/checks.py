"""The freshness expectation on the scores: the day's reference date is scored by the
deadline. Evaluated from the Dagster instance alone (which partitions were materialized),
so it never opens the warehouse and runs in any run, or in the freshness sensor."""

from datetime import UTC, datetime

import dagster as dg

from olist_churn_dagster.defs.ml.assets import SCORES_KEY
from olist_churn_dagster.lib.alerts import Freshness, scores_freshness
from olist_churn_dagster.lib.settings import load_settings

FRESHNESS_CHECK = "scores_fresh"


def current_freshness(instance: dg.DagsterInstance, now: datetime | None = None) -> Freshness:
    scored = instance.get_materialized_partitions(SCORES_KEY)
    deadline = load_settings().scores_deadline_utc
    return scores_freshness(now or datetime.now(UTC), deadline, sorted(scored))


def freshness_metadata(freshness: Freshness) -> dict[str, dg.MetadataValue]:
    behind = freshness.days_behind
    return {
        "expected_reference_date": dg.MetadataValue.text(freshness.expected.isoformat()),
        "newest_scored_date": dg.MetadataValue.text(str(freshness.newest_scored or "none")),
        "days_behind": dg.MetadataValue.int(behind) if behind is not None else "n/a",
        "deadline_utc": dg.MetadataValue.text(load_settings().scores_deadline_utc.isoformat()),
    }


@dg.asset_check(
    asset=SCORES_KEY,
    name=FRESHNESS_CHECK,
    description="Scores for today's reference date exist by OLIST_CHURN_SCORES_DEADLINE_UTC "
    "(04:00 UTC by default; before it, yesterday's). Also evaluated every few minutes by "
    "the scores_freshness sensor, which raises an alert when it fails.",
)
def scores_fresh(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    freshness = current_freshness(context.instance)
    return dg.AssetCheckResult(
        passed=freshness.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=freshness.describe(),
        metadata=freshness_metadata(freshness),
    )
