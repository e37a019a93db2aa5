"""Schedules: daily scoring and monthly retraining (both start stopped; see README)."""

import dagster as dg

from olist_churn_dagster.defs.jobs import scoring_job, training_job

# Each morning: the newest reference date (today, built from everything before today).
daily_scoring_schedule = dg.build_schedule_from_partitioned_job(
    scoring_job, hour_of_day=3, minute_of_hour=0, name="daily_scoring"
)

monthly_retraining_schedule = dg.ScheduleDefinition(
    name="monthly_retraining",
    job=training_job,
    cron_schedule="0 4 2 * *",  # the 2nd, so the 1st-of-month cohort is scored first
    description="Rebuild the ABT and retrain; the champion gate decides on promotion.",
)
