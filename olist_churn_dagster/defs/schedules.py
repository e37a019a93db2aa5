"""Schedules: daily scoring and monthly retraining (both start stopped; see README)."""

import dagster as dg

from olist_churn_dagster.defs.jobs import scoring_job, training_job
from olist_churn_dagster.defs.ml.assets import SCORES_KEY
from olist_churn_dagster.defs.partitions import registered_dates


@dg.schedule(
    name="daily_scoring",
    job=scoring_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    description="Each morning: features and scores for the newest reference date the feed "
    "has delivered, unless they are there already (the snapshot sensor usually did it).",
)
def daily_scoring_schedule(context: dg.ScheduleEvaluationContext):
    keys = registered_dates(context.instance)
    if not keys:
        return dg.SkipReason("no reference dates registered yet: load the raw tables first")
    newest = keys[-1]
    if newest in context.instance.get_materialized_partitions(SCORES_KEY):
        return dg.SkipReason(f"{newest}, the newest reference date, is scored already")
    return dg.RunRequest(run_key=f"daily-scoring-{newest}", partition_key=newest)


monthly_retraining_schedule = dg.ScheduleDefinition(
    name="monthly_retraining",
    job=training_job,
    cron_schedule="0 4 2 * *",  # the 2nd, so the 1st-of-month cohort is scored first
    execution_timezone="UTC",
    description="Rebuild the ABT and retrain; the champion gate decides on promotion.",
)
