"""Schedules and sensors evaluated through Dagster's own contexts, at given times, on
temporary instances: the daily and monthly schedules, the champion sensor, the run-failure
alerts and the scores' freshness expectation."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from olist_churn_dagster.defs.alerts.checks import current_freshness
from olist_churn_dagster.defs.ml.resources import MlflowTracking
from olist_churn_dagster.defs.partitions import (
    reference_date_partitions,
    register_reference_dates,
    registered_dates,
)
from olist_churn_dagster.lib.alerts import read_alerts
from olist_churn_dagster.lib.ml.tracking import CHAMPION_ALIAS, MODEL_NAME
from olist_churn_dagster_tests.conftest import sensor_context, settings_resource

SCORES = dg.AssetKey(["ml", "churn_scores"])
DAYS = [date(2018, 10, 1) + timedelta(days=i) for i in range(20)]
DEADLINE = time(4)  # OLIST_CHURN_SCORES_DEADLINE_UTC's default


@pytest.fixture()
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def _scored(instance: dg.DagsterInstance, *days: date) -> None:
    """Record score materializations as a run would (only the instance is read)."""
    for day in days:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key=SCORES, partition=day.isoformat())
        )


def _tick(definitions: dg.Definitions, name: str, instance, when: datetime):
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=when,
        repository_def=definitions.get_repository_def(),
    )
    return definitions.resolve_schedule_def(name).evaluate_tick(context)


# ------------------------------------------------------------------------------ schedules


def test_daily_schedule_asks_for_the_newest_date_until_it_is_scored(definitions, instance):
    at_three = datetime(2018, 10, 21, 3, tzinfo=UTC)
    assert (
        "no reference dates registered"
        in _tick(definitions, "daily_scoring", instance, at_three).skip_message
    )

    register_reference_dates(instance, DAYS)
    (request,) = _tick(definitions, "daily_scoring", instance, at_three).run_requests
    assert request.partition_key == "2018-10-20"
    assert request.run_key == "daily-scoring-2018-10-20"
    assert definitions.resolve_schedule_def("daily_scoring").job_name == "score_sellers"

    _scored(instance, DAYS[-1])
    tick = _tick(definitions, "daily_scoring", instance, at_three)
    assert not tick.run_requests and "2018-10-20" in tick.skip_message

    register_reference_dates(instance, [DAYS[-1] + timedelta(days=1)])  # a snapshot landed
    (request,) = _tick(definitions, "daily_scoring", instance, at_three).run_requests
    assert request.partition_key == "2018-10-21"


def test_monthly_schedule_retrains_on_the_second_at_four(definitions, instance):
    monthly = definitions.resolve_schedule_def("monthly_retraining")
    assert (monthly.cron_schedule, monthly.execution_timezone) == ("0 4 2 * *", "UTC")
    tick = _tick(definitions, "monthly_retraining", instance, datetime(2026, 12, 2, 4, tzinfo=UTC))
    (request,) = tick.run_requests
    assert monthly.job_name == "train_churn_model"
    assert request.partition_key is None  # the ABT and the model are not partitioned


# ------------------------------------------------------------------------- champion sensor


@pytest.fixture()
def registry(tmp_path: Path) -> tuple[str, MlflowClient]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(MODEL_NAME)
    return uri, client


def _new_champion(client: MlflowClient, folder: Path) -> str:
    version = client.create_model_version(MODEL_NAME, source=str(folder)).version
    client.set_registered_model_alias(MODEL_NAME, CHAMPION_ALIAS, version)
    return str(version)


def _champion_tick(definitions, instance, uri: str, cursor: str | None):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"mlflow": MlflowTracking(tracking_uri=uri), **settings_resource(definitions)},
    )
    sensor = definitions.resolve_sensor_def("champion_sensor")
    return sensor.evaluate_tick(context)


def test_champion_sensor_adopts_skips_then_rescores_once(
    definitions, instance, registry, tmp_path: Path
):
    uri, client = registry
    register_reference_dates(instance, DAYS)
    none_yet = _champion_tick(definitions, instance, uri, None)
    assert "no champion promoted yet" in none_yet.skip_message

    first = _new_champion(client, tmp_path)
    adopted = _champion_tick(definitions, instance, uri, None)
    assert not adopted.run_requests and adopted.cursor == first  # its own run scored

    same = _champion_tick(definitions, instance, uri, first)
    assert not same.run_requests and f"still version {first}" in same.skip_message

    second = _new_champion(client, tmp_path)
    moved = _champion_tick(definitions, instance, uri, first)
    (request,) = moved.run_requests
    assert moved.cursor == second and request.run_key == f"champion-{second}"
    recent = registered_dates(instance)[-7:]  # OLIST_CHURN_RESCORE_DAYS, default 7
    assert request.tags["dagster/asset_partition_range_start"] == recent[0]
    assert request.tags["dagster/asset_partition_range_end"] == recent[-1]
    assert definitions.resolve_sensor_def("champion_sensor").job_name == "rescore_with_champion"


def test_an_older_date_registered_later_deletes_nothing_and_the_newest_is_still_used(
    definitions, instance, registry, tmp_path: Path
):
    """A date registered after newer ones (a snapshot before its history, a filled gap) is
    appended: every earlier key keeps its place, and the consumers still read date order."""
    uri, client = registry
    gap = DAYS[-3]
    register_reference_dates(instance, [d for d in DAYS if d != gap])
    before = instance.get_dynamic_partitions("reference_date")
    assert register_reference_dates(instance, [gap, *DAYS[:2]]) == [gap.isoformat()]
    after = instance.get_dynamic_partitions("reference_date")
    assert after == [*before, gap.isoformat()]  # nothing deleted nor moved
    assert registered_dates(instance) == [d.isoformat() for d in DAYS]

    at_three = datetime(2018, 10, 21, 3, tzinfo=UTC)
    (request,) = _tick(definitions, "daily_scoring", instance, at_three).run_requests
    assert request.partition_key == DAYS[-1].isoformat()

    first = _new_champion(client, tmp_path)
    _new_champion(client, tmp_path)
    (rescore,) = _champion_tick(definitions, instance, uri, first).run_requests
    bounds = dg.PartitionKeyRange(
        rescore.tags["dagster/asset_partition_range_start"],
        rescore.tags["dagster/asset_partition_range_end"],
    )
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        covered = reference_date_partitions.get_partition_keys_in_range(bounds)
    assert set(covered) == {d.isoformat() for d in DAYS[-7:]}


# ----------------------------------------------------------------------------- alerts


def test_a_failed_run_becomes_an_alert_on_file(definitions, instance, data_dir: Path):
    alerts_file = data_dir / "alerts" / "alerts.jsonl"
    before = len(read_alerts(alerts_file))
    # A real failing run of a project job: the raw load from a folder that is not there.
    result = definitions.resolve_job_def("load_raw_tables").execute_in_process(
        instance=instance,
        run_config={"ops": {"raw_tables": {"config": {"source": "/nonexistent/olist"}}}},
        raise_on_error=False,
    )
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    failure = instance.get_records_for_run(
        result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE
    ).records[0]
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alerts",
        dagster_event=failure.event_log_entry.dagster_event,
        dagster_instance=instance,
        dagster_run=run,
        resources=settings_resource(definitions),
    ).for_run_failure()
    definitions.resolve_sensor_def("run_failure_alerts")(context)

    alerts = read_alerts(alerts_file)
    assert len(alerts) == before + 1
    alert = alerts[-1]
    assert alert["kind"] == "run_failure"
    assert alert["fields"]["run_id"] == result.run_id
    assert alert["fields"]["job"] == "load_raw_tables"
    assert "load_raw_tables" in alert["title"]
    # The failed step's own error, not only "Steps failed: [...]".
    assert "raw_tables: " in alert["detail"] and "/nonexistent/olist" in alert["detail"]


def test_freshness_passes_when_the_day_is_scored_and_fails_when_it_is_late(instance):
    register_reference_dates(instance, DAYS)
    _scored(instance, *DAYS[:-1])
    # 2018-10-20 04:30 UTC: the deadline (04:00) has passed, 2018-10-20 is due.
    late = current_freshness(instance, DEADLINE, datetime(2018, 10, 20, 4, 30, tzinfo=UTC))
    assert not late.passed and late.expected == DAYS[-1] and late.days_behind == 1
    # Before the deadline, yesterday's scores are what is due: there.
    early = current_freshness(instance, DEADLINE, datetime(2018, 10, 20, 3, 59, tzinfo=UTC))
    assert early.passed and early.expected == DAYS[-2]
    _scored(instance, DAYS[-1])
    assert current_freshness(instance, DEADLINE, datetime(2018, 10, 20, 4, 30, tzinfo=UTC)).passed


def _delivered(instance: dg.DagsterInstance, as_of: date) -> None:
    """Record a raw load of a source as of `as_of`, as the raw asset's metadata says it."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=dg.AssetKey(["raw", "orders"]), metadata={"as_of_date": as_of.isoformat()}
        )
    )


def test_a_late_feed_fails_the_feed_check_not_the_scores(instance):
    """Scores are due for the newest date the feed delivered: a late feed is the feed's
    failure (a warning on raw/orders), not the scoring's."""
    from olist_churn_dagster.defs.alerts.checks import current_feed_freshness

    register_reference_dates(instance, DAYS)
    now = datetime(2018, 10, 30, 5, 0, tzinfo=UTC)  # ten days after the last date
    _delivered(instance, DAYS[-1])
    _scored(instance, *DAYS[:-1])
    scores = current_freshness(instance, DEADLINE, now)
    assert not scores.passed and scores.expected == DAYS[-1]
    _scored(instance, DAYS[-1])
    assert current_freshness(instance, DEADLINE, now).passed
    feed = current_feed_freshness(instance, DEADLINE, now)
    assert not feed.passed and feed.expected == now.date() and feed.days_behind == 10
    assert feed.describe() == f"the feed's data for {now.date()} is missing (data as of {DAYS[-1]})"
    _delivered(instance, now.date())
    assert current_feed_freshness(instance, DEADLINE, now).passed
    assert not current_freshness(instance, DEADLINE, now).passed  # delivered, so now due


def test_freshness_sensor_reports_the_checks_and_alerts_once(definitions, instance, data_dir):
    alerts_file = data_dir / "alerts" / "alerts.jsonl"
    before = len(read_alerts(alerts_file))
    register_reference_dates(instance, DAYS)  # scored: nothing, and the days are long past
    sensor = definitions.resolve_sensor_def("scores_freshness")
    first = sensor.evaluate_tick(sensor_context(definitions, instance=instance))
    checks = {(e.asset_key, e.check_name): e for e in first.asset_events}
    assert set(checks) == {(SCORES, "scores_fresh"), (dg.AssetKey(["raw", "orders"]), "feed_fresh")}
    assert all(isinstance(e, dg.AssetCheckEvaluation) for e in checks.values())
    assert not any(e.passed for e in checks.values())
    assert checks[(SCORES, "scores_fresh")].severity == dg.AssetCheckSeverity.ERROR
    assert [a["kind"] for a in read_alerts(alerts_file)[before:]] == ["scores_stale", "feed_late"]

    again = sensor.evaluate_tick(
        sensor_context(definitions, instance=instance, cursor=first.cursor)
    )
    assert not again.asset_events and "unchanged" in again.skip_message
    assert len(read_alerts(alerts_file)) == before + 2  # one alert per late date

    today = datetime.now(UTC).date()
    _delivered(instance, today)
    _scored(instance, today)
    recovered = sensor.evaluate_tick(
        sensor_context(definitions, instance=instance, cursor=first.cursor)
    )
    assert len(recovered.asset_events) == 2
    assert all(e.passed for e in recovered.asset_events)
    assert len(read_alerts(alerts_file)) == before + 2  # passing raises nothing
