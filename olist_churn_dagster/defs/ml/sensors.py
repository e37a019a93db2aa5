"""The champion sensor: when the champion alias moves, rescore the recent partitions."""

import dagster as dg

from olist_churn_dagster.defs.jobs import rescore_job
from olist_churn_dagster.defs.ml.resources import MlflowTracking
from olist_churn_dagster.defs.partitions import covering_range, registered_dates
from olist_churn_dagster.defs.settings import ChurnSettings
from olist_churn_dagster.defs.tags import range_tags
from olist_churn_dagster.lib.ml.tracking import champion_version


@dg.sensor(
    job=rescore_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A newly promoted champion rescores the last N score partitions "
    "(OLIST_CHURN_RESCORE_DAYS) in one run.",
)
def champion_sensor(
    context: dg.SensorEvaluationContext, mlflow: MlflowTracking, settings: ChurnSettings
):
    version = champion_version(mlflow.ready_uri())
    if version is None:
        return dg.SkipReason("no champion promoted yet")
    if context.cursor is None:
        # First look: adopt the current champion; the run that promoted it scored already.
        context.update_cursor(version)
        return dg.SkipReason(f"champion is version {version}; watching for a new one")
    if version == context.cursor:
        return dg.SkipReason(f"champion is still version {version}")
    recent = registered_dates(context.instance)[-settings.rescore_days :]
    context.update_cursor(version)
    if not recent:
        return dg.SkipReason(f"champion is version {version}; no reference dates to rescore")
    return dg.RunRequest(
        run_key=f"champion-{version}",
        tags={
            **range_tags(*covering_range(context.instance, recent)),
            "olist/champion_version": version,
        },
    )
