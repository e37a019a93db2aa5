"""The champion sensor: when the champion alias moves, rescore the recent partitions."""

from datetime import UTC, datetime

import dagster as dg

from olist_churn_dagster.defs.jobs import rescore_job
from olist_churn_dagster.defs.ml.resources import MlflowTracking
from olist_churn_dagster.defs.partitions import reference_date_partitions
from olist_churn_dagster.defs.tags import range_tags
from olist_churn_dagster.lib.settings import load_settings
from olist_churn_dagster.lib.tracking import champion_version


@dg.sensor(
    job=rescore_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A newly promoted champion rescores the last N score partitions "
    "(OLIST_CHURN_RESCORE_DAYS) in one run.",
)
def champion_sensor(context: dg.SensorEvaluationContext, mlflow: MlflowTracking):
    version = champion_version(mlflow.ready_uri())
    if version is None:
        return dg.SkipReason("no champion promoted yet")
    if context.cursor is None:
        # First look: adopt the current champion; the run that promoted it scored already.
        context.update_cursor(version)
        return dg.SkipReason(f"champion is version {version}; watching for a new one")
    if version == context.cursor:
        return dg.SkipReason(f"champion is still version {version}")
    keys = reference_date_partitions.get_partition_keys(current_time=datetime.now(UTC))
    recent = keys[-load_settings().rescore_days :]
    context.update_cursor(version)
    return dg.RunRequest(
        run_key=f"champion-{version}",
        tags={**range_tags(recent[0], recent[-1]), "olist/champion_version": version},
    )
