from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from olist_churn_dagster.lib.ingest.loader import load_dataset, purchase_date_range
from olist_churn_dagster.lib.ingest.snapshots import MARKER_FILE, cut_as_of, write_snapshot
from olist_churn_dagster_tests.conftest import sensor_context, settings_resource


@pytest.fixture()
def snapshots(data_dir: Path):
    root = data_dir / "snapshots"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def full_tables(data_dir: Path) -> dict[str, pl.DataFrame]:
    return load_dataset(data_dir / "raw")


def _evaluate(definitions: dg.Definitions, cursor: str | None = None):
    sensor = definitions.resolve_sensor_def("snapshot_sensor")
    with dg.instance_for_test() as instance:
        context = sensor_context(definitions, instance=instance, cursor=cursor)
        return sensor(context)


def _last_day(data_dir: Path):
    return purchase_date_range(data_dir / "raw")[1]


def test_no_snapshot_skips(definitions, snapshots):
    result = _evaluate(definitions)
    assert not result.run_requests
    assert "no new complete snapshot" in result.skip_reason.skip_message


def test_new_duplicate_and_corrected_snapshots(definitions, snapshots, full_tables, data_dir):
    day = _last_day(data_dir)
    path = write_snapshot(cut_as_of(full_tables, day), snapshots, day)
    first = _evaluate(definitions)
    (request,) = first.run_requests
    assert request.partition_key == day.isoformat()
    assert request.run_config["ops"]["raw_tables"]["config"]["source"] == str(path)
    assert definitions.resolve_sensor_def("snapshot_sensor").job_name == "load_snapshot"

    again = _evaluate(definitions, first.cursor)
    assert not again.run_requests  # same content: never launched twice

    corrected = cut_as_of(full_tables, day)
    corrected["sellers"] = corrected["sellers"].with_columns(pl.lit("SP").alias("seller_state"))
    write_snapshot(corrected, snapshots, day)
    fixed = _evaluate(definitions, again.cursor)
    (request2,) = fixed.run_requests
    assert request2.run_key != request.run_key


def test_incomplete_bad_and_older_snapshots(definitions, snapshots, full_tables, data_dir):
    day = _last_day(data_dir)
    write_snapshot(cut_as_of(full_tables, day), snapshots, day)
    launched = _evaluate(definitions)
    assert len(launched.run_requests) == 1

    older = day - timedelta(days=2)
    write_snapshot(cut_as_of(full_tables, older), snapshots, older)
    incomplete = snapshots / (day + timedelta(days=2)).isoformat()
    incomplete.mkdir()
    (snapshots / "not-a-date").mkdir()
    truncated_day = day + timedelta(days=1)  # newer, in range, but damaged
    truncated = write_snapshot(cut_as_of(full_tables, truncated_day), snapshots, truncated_day)
    items = truncated / "olist_order_items_dataset.csv"
    items.write_text("\n".join(items.read_text().splitlines()[:-3]) + "\n")

    result = _evaluate(definitions, launched.cursor)
    assert not result.run_requests
    message = result.skip_reason.skip_message
    assert f"waiting for the marker of {incomplete.name}" in message
    assert "not-a-date" in message
    assert f"{older.isoformat()}: older than" in message
    assert f"{truncated_day.isoformat()}: olist_order_items_dataset.csv" in message

    (incomplete / MARKER_FILE).write_text("{not json")
    broken = _evaluate(definitions, launched.cursor)
    assert not broken.run_requests
    assert incomplete.name in broken.skip_reason.skip_message


def test_a_failed_snapshot_run_is_named_once_and_counted_until_a_rerun_succeeds(
    definitions, snapshots, full_tables, data_dir
):
    day = _last_day(data_dir)
    path = write_snapshot(cut_as_of(full_tables, day), snapshots, day)
    sensor = definitions.resolve_sensor_def("snapshot_sensor")
    job = definitions.resolve_job_def("load_snapshot")
    raw_keys = list(definitions.resolve_assets_def(dg.AssetKey(["raw", "orders"])).keys)
    with dg.instance_for_test() as instance:
        first = sensor(sensor_context(definitions, instance=instance))
        (request,) = first.run_requests
        (partitions,) = first.dynamic_partitions_requests
        instance.add_dynamic_partitions(partitions.partitions_def_name, partitions.partition_keys)

        def run(source: Path) -> dg.ExecuteInProcessResult:
            return job.execute_in_process(
                instance=instance,
                partition_key=request.partition_key,
                run_config={"ops": {"raw_tables": {"config": {"source": str(source)}}}},
                tags=request.tags,
                asset_selection=raw_keys,
                raise_on_error=False,
            )

        failed = run(path.parent / "moved-away")  # the folder is gone when the run starts
        assert not failed.success
        tick = sensor(sensor_context(definitions, instance=instance, cursor=first.cursor))
        assert not tick.run_requests  # its run key is spent: only a re-execution loads it
        expected = f"snapshot {day}: run {failed.run_id[:8]} failed; re-execute it from the UI"
        assert expected in tick.skip_reason.skip_message
        later = sensor(sensor_context(definitions, instance=instance, cursor=tick.cursor))
        assert expected not in later.skip_reason.skip_message  # named once, then counted
        assert "1 failed snapshot run(s) named earlier" in later.skip_reason.skip_message

        assert run(path).success  # the re-execution, with the snapshot back in place
        tick = sensor(sensor_context(definitions, instance=instance, cursor=later.cursor))
        assert "failed" not in tick.skip_reason.skip_message


def test_a_snapshot_not_newer_than_the_raw_tables_is_refused_on_the_tick(
    definitions, snapshots, full_tables, data_dir
):
    """No run, so no partition is marked failed: one snapshot_refused alert, the reason
    and what to do instead on the tick, then only a count."""
    from olist_churn_dagster.lib.alerts import read_alerts
    from olist_churn_dagster.lib.settings import load_settings

    day = _last_day(data_dir)
    write_snapshot(cut_as_of(full_tables, day), snapshots, day)
    sensor = definitions.resolve_sensor_def("snapshot_sensor")
    alerts_file = load_settings().alerts_file
    before = len(read_alerts(alerts_file))
    with dg.instance_for_test() as instance:
        raw_as_of = day + timedelta(days=3)
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=dg.AssetKey(["raw", "orders"]),
                metadata={"as_of_date": raw_as_of.isoformat()},
            )
        )
        first = sensor(sensor_context(definitions, instance=instance))
        assert not first.run_requests and not first.dynamic_partitions_requests
        message = first.skip_reason.skip_message
        assert f"refused {day}: older than the raw tables, which hold data as of {raw_as_of}" in (
            message
        )
        assert f"run the score_sellers job for partition {day}" in message
        again = sensor(sensor_context(definitions, instance=instance, cursor=first.cursor))
        assert not again.run_requests
        assert "1 snapshot(s) refused earlier" in again.skip_reason.skip_message
        assert not instance.get_runs()
    alerts = read_alerts(alerts_file)[before:]
    assert [(a["kind"], a["fields"]["snapshot"]) for a in alerts] == [
        ("snapshot_refused", day.isoformat())
    ]


@pytest.mark.slow
def test_snapshot_runs_load_changes_and_compute_features_equal_to_a_full_computation(
    definitions, snapshots, full_tables, data_dir, tmp_path
):
    """Three snapshots through the sensor and its run's raw and feature assets (on a
    warehouse of their own, so the job's scores are left out): the first loads whole, the
    next as changes, the last with corrections of old rows; each date's features, computed
    from the window and the per-seller state, equal those computed from the whole
    snapshot."""
    from polars.testing import assert_frame_equal

    from olist_churn_dagster.defs.features.assets import feature_tables
    from olist_churn_dagster.defs.raw.assets import raw_tables
    from olist_churn_dagster.defs.warehouse import warehouse_resources
    from olist_churn_dagster.lib.features import FEATURE_FAMILIES, compute_features
    from olist_churn_dagster.lib.settings import load_settings
    from olist_churn_dagster.lib.tables import feature_table
    from olist_churn_dagster_tests.lib.features.test_incremental import (
        cancel_and_reprice,
        move_and_delete,
    )

    settings = load_settings()
    path = tmp_path / "warehouse.duckdb"
    sensor = definitions.resolve_sensor_def("snapshot_sensor")
    # The run's raw and feature assets as defined (the job's own binds the session's
    # warehouse), with the sensor's run request.
    assets = [raw_tables, feature_tables]
    last = _last_day(data_dir)
    source, cursor = dict(full_tables), None
    steps = [(last - timedelta(days=3), None), (last - timedelta(days=2), None), (last, "fix")]
    with dg.instance_for_test() as instance:
        for day, fix in steps:
            if fix:
                old = day - timedelta(days=settings.feature_window_days + 30)
                source = move_and_delete(cancel_and_reprice(source, old), old)
            write_snapshot(cut_as_of(source, day), snapshots, day)
            evaluation = sensor(sensor_context(definitions, instance=instance, cursor=cursor))
            (request,) = evaluation.run_requests
            instance.add_dynamic_partitions("reference_date", [request.partition_key])
            result = dg.materialize(
                assets,
                instance=instance,
                partition_key=request.partition_key,
                run_config=request.run_config,
                tags=request.tags,
                resources={**warehouse_resources(path), **settings_resource(definitions)},
            )
            assert result.success
            cursor = evaluation.cursor
            orders = next(
                m
                for m in result.asset_materializations_for_node("raw_tables")
                if m.asset_key.path[-1] == "orders"
            ).metadata
            whole = load_dataset(snapshots / day.isoformat())
            with duckdb.connect(str(path), read_only=True) as conn:
                for family in FEATURE_FAMILIES:
                    stored = conn.execute(
                        f"SELECT * FROM {feature_table(family)} WHERE reference_date = ?", [day]
                    ).pl()
                    expected = compute_features(
                        family,
                        whole,
                        [day],
                        window_days=settings.feature_window_days,
                        horizon_days=settings.churn_horizon_days,
                    )
                    assert stored.height > 0
                    assert_frame_equal(stored.select(expected.columns), expected, check_exact=True)
            mode = orders["load_mode"].value
            if day == steps[0][0]:
                assert mode == "full"
            else:
                assert mode == "delta" and orders["rows_inserted"].value > 0
            if fix:
                assert orders["rows_updated"].value >= 1 and orders["rows_deleted"].value == 1
