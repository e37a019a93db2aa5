"""The snapshot sensor: a complete new snapshot refreshes the raw tables and fills that
day's feature partitions, in one run keyed on the snapshot's content."""

from datetime import UTC, date, datetime

import dagster as dg

from olist_churn_dagster.defs.jobs import snapshot_job
from olist_churn_dagster.defs.partitions import reference_date_partitions
from olist_churn_dagster.lib.settings import load_settings
from olist_churn_dagster.lib.snapshot_feed import FeedCursor, decide


def _partition_bounds() -> tuple[date, date]:
    keys = reference_date_partitions.get_partition_keys(current_time=datetime.now(UTC))
    return date.fromisoformat(keys[0]), date.fromisoformat(keys[-1])


@dg.sensor(
    job=snapshot_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Watches $OLIST_CHURN_DATA_DIR/snapshots for complete as-of dumps (marker _SUCCESS) "
        "and loads each new one, then computes that date's partitions."
    ),
)
def snapshot_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    first, last = _partition_bounds()
    decision = decide(
        load_settings().snapshots_dir, FeedCursor.parse(context.cursor), first=first, last=last
    )
    for reason in decision.skipped:
        context.log.warning(reason)
    requests = [
        dg.RunRequest(
            run_key=launch.run_key,
            partition_key=launch.as_of.isoformat(),
            run_config={"ops": {"raw_tables": {"config": {"source": str(launch.path)}}}},
            tags={
                "olist/snapshot": launch.as_of.isoformat(),
                "olist/snapshot_fingerprint": launch.fingerprint,
            },
        )
        for launch in decision.launches
    ]
    return dg.SensorResult(
        run_requests=requests,
        cursor=decision.cursor.dump(),
        skip_reason=None if requests else decision.summary(),
    )
