"""The snapshot sensor: a complete new snapshot refreshes the raw tables and fills that
day's feature and score partitions, in one run keyed on the snapshot's content."""

from datetime import date

import dagster as dg

from olist_churn_dagster.defs.alerts.sensors import send_alert
from olist_churn_dagster.defs.jobs import snapshot_job
from olist_churn_dagster.defs.partitions import REFERENCE_DATES, registered_dates
from olist_churn_dagster.defs.raw.assets import loaded_as_of
from olist_churn_dagster.defs.settings import ChurnSettings
from olist_churn_dagster.lib.alerts import Alert
from olist_churn_dagster.lib.calendar import keys_through
from olist_churn_dagster.lib.ingest.feed import (
    FeedCursor,
    Refusal,
    SnapshotLaunch,
    decide,
    report_failures,
)

SNAPSHOT_TAG = "olist/snapshot"
_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def loading_snapshot(instance: dg.DagsterInstance) -> str | None:
    """The snapshot whose run is queued or running, if any: the next one waits for it, so
    snapshots load in date order and the raw tables never roll back."""
    active = instance.get_runs(
        dg.RunsFilter(job_name=snapshot_job.name, statuses=_IN_FLIGHT), limit=1
    )
    return f"{active[0].tags.get(SNAPSHOT_TAG)} (run {active[0].run_id[:8]})" if active else None


def failed_snapshot_runs(instance: dg.DagsterInstance, limit: int = 30) -> list[tuple[date, str]]:
    """(snapshot date, run id) of each snapshot whose latest run failed: its run key is
    spent, so only a re-execution (from the run's page in the UI) loads it."""
    latest: dict[str, dg.DagsterRun] = {}
    for run in instance.get_runs(dg.RunsFilter(job_name=snapshot_job.name), limit=limit):
        if SNAPSHOT_TAG in run.tags:
            latest.setdefault(run.tags[SNAPSHOT_TAG], run)  # newest first
    return [
        (date.fromisoformat(day), run.run_id)
        for day, run in sorted(latest.items())
        if run.status == dg.DagsterRunStatus.FAILURE
    ]


def _alert_refusals(refusals: list[Refusal], log, settings: ChurnSettings) -> None:
    for refusal in refusals:
        send_alert(
            Alert(
                kind="snapshot_refused",
                title=f"Snapshot {refusal.as_of} refused",
                detail=refusal.text(),
                fields={
                    "snapshot": refusal.as_of.isoformat(),
                    "fingerprint": refusal.fingerprint,
                },
            ),
            log,
            settings,
        )


def _run_request(launch: SnapshotLaunch) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=launch.run_key,
        partition_key=launch.as_of.isoformat(),
        run_config={"ops": {"raw_tables": {"config": {"source": str(launch.path)}}}},
        tags={
            SNAPSHOT_TAG: launch.as_of.isoformat(),
            "olist/snapshot_fingerprint": launch.fingerprint,
        },
    )


def _partitions_request(
    instance: dg.DagsterInstance, launches: list[SnapshotLaunch]
) -> dg.AddDynamicPartitionsRequest:
    """Each launched date's partition, added before its run is launched, with the days
    before it not registered yet, in date order (the UI and ranges follow that order)."""
    registered = registered_dates(instance)
    return dg.AddDynamicPartitionsRequest(
        partitions_def_name=REFERENCE_DATES,
        partition_keys=[
            key for launch in launches for key in keys_through(registered, launch.as_of)
        ],
    )


@dg.sensor(
    job=snapshot_job,
    minimum_interval_seconds=5,  # the sensor daemon's own loop: a snapshot waits 5 s at most
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Watches $OLIST_CHURN_DATA_DIR/snapshots for complete as-of dumps (marker _SUCCESS), "
        "registers each new one's reference date and loads it, then computes that date's "
        "features and scores. A snapshot that would roll the raw tables back is refused on "
        "the tick (one snapshot_refused alert), never launched."
    ),
)
def snapshot_sensor(
    context: dg.SensorEvaluationContext, settings: ChurnSettings
) -> dg.SensorResult:
    loading = loading_snapshot(context.instance)
    raw_as_of = loaded_as_of(context.instance)
    decision = decide(
        settings.to_settings().snapshots_dir,
        FeedCursor.parse(context.cursor),
        limit=0 if loading else 1,
        raw_as_of=raw_as_of,
    )
    for reason in decision.skipped:
        context.log.warning(reason)
    _alert_refusals(decision.refused, context.log, settings)
    requests = [_run_request(launch) for launch in decision.launches]
    partitions = _partitions_request(context.instance, decision.launches)
    failures = failed_snapshot_runs(context.instance)
    notes = [decision.summary(), *report_failures(failures, decision.cursor, raw_as_of)]
    if loading:
        notes.insert(0, f"loading snapshot {loading}")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[partitions] if requests else [],
        cursor=decision.cursor.dump(),
        skip_reason=None if requests else ". ".join(notes),
    )
