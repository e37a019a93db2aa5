from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from olist_churn_dagster.defs.partitions import registered_dates
from olist_churn_dagster.defs.raw.assets import raw_asset_key
from olist_churn_dagster.defs.settings import churn_settings
from olist_churn_dagster.defs.tags import range_tags
from olist_churn_dagster.lib.features import FEATURE_FAMILIES, compute_features
from olist_churn_dagster.lib.features.writer import FAMILY_SOURCES
from olist_churn_dagster.lib.ingest.loader import load_dataset


def _materializations(result, family: str) -> list[dg.AssetMaterialization]:
    """The run's materializations of one feature table, in the order they were recorded
    (the six tables are outputs of one multi-asset node)."""
    key = dg.AssetKey(["features", f"seller_{family}"])
    return [
        e.event_specific_data.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key == key
    ]


def _counts(warehouse: Path) -> dict[str, dict[date, int]]:
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        return {
            family: dict(
                conn.execute(
                    f"SELECT reference_date, count(*) FROM features.seller_{family} GROUP BY 1"
                ).fetchall()
            )
            for family in FEATURE_FAMILIES
        }


def _empty_feature_tables(warehouse: Path) -> None:
    """Delete the rows of the six feature tables that an earlier module of the session (on
    the same worker) may have written, so that what the tests count is this run's."""
    with duckdb.connect(str(warehouse)) as conn:
        present = {
            name
            for (name,) in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'features'"
            ).fetchall()
        }
        for family in FEATURE_FAMILIES:
            if f"seller_{family}" in present:
                conn.execute(f"DELETE FROM features.seller_{family}")


@pytest.fixture(scope="module")
def backfilled(definitions: dg.Definitions, instance_with_raw: dg.DagsterInstance, data_dir: Path):
    instance = instance_with_raw
    _empty_feature_tables(data_dir / "warehouse.duckdb")
    job = definitions.resolve_job_def("build_feature_store")
    keys = registered_dates(instance)
    window = keys[-30:-20]
    result = job.execute_in_process(instance=instance, tags=range_tags(window[0], window[-1]))
    assert result.success
    return job, window, result


def test_backfill_is_one_run_over_the_whole_range(backfilled, data_dir):
    _, window, result = backfilled
    materializations = _materializations(result, "sales")
    assert len(materializations) == len(window)  # one per partition, from a single run
    counts = _counts(data_dir / "warehouse.duckdb")
    expected_dates = {date.fromisoformat(k) for k in window}
    for family in FEATURE_FAMILIES:
        assert set(counts[family]) == expected_dates, family
        assert counts[family] == counts["sales"]  # same spine: active sellers per date
    metadata = materializations[-1].metadata  # the one the UI shows as the latest
    assert metadata["rows_written_for_range"].value == sum(counts["sales"].values())
    assert metadata["partitions_in_range"].value == len(window)
    assert metadata["reference_dates"].value == len(window)
    preview = metadata["preview"]
    assert isinstance(preview, dg.TableMetadataValue) and len(preview.records) == 10
    assert "seller_id" in preview.records[0].data
    columns = {c.name: c for c in metadata["dagster/column_schema"].schema.columns}
    described = [c for c in columns.values() if c.description]
    assert columns["sales_revenue"].description.startswith("sum of item prices")
    assert len(described) == len(columns) - 2  # all but the keys


def test_range_metadata_is_written_once_not_per_partition(backfilled, instance_with_raw):
    """Dagster copies an output's metadata onto each partition's materialization; the
    range's schema, preview and counts go on the last one recorded only, so the event log
    does not hold one copy per date."""
    _, window, result = backfilled
    for family in FEATURE_FAMILIES:
        events = _materializations(result, family)
        assert sorted(e.partition for e in events) == window
        assert all(not e.metadata for e in events[:-1]), family
        assert "dagster/table_name" in events[-1].metadata
        # Each partition still has its own materialization: the UI shows all of them green.
        stored = instance_with_raw.get_materialized_partitions(events[0].asset_key)
        assert set(window) <= stored


def test_range_run_records_every_partition_of_every_table(backfilled, instance_with_raw):
    """The six tables are one step, yet each records its own materialization per date
    of the range, in the instance the UI reads, and one output each."""
    _, window, result = backfilled
    for family in FEATURE_FAMILIES:
        key = dg.AssetKey(["features", f"seller_{family}"])
        assert set(window) <= instance_with_raw.get_materialized_partitions(key), family
        records = instance_with_raw.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=window), limit=1000
        ).records
        assert {r.partition_key for r in records if r.run_id == result.run_id} == set(window)
    steps = {e.step_key for e in result.all_events if e.step_key}
    assert steps == {"feature_tables", "feature_table_checks"}


def test_stored_rows_equal_the_core_computation(backfilled, data_dir):
    _, window, _ = backfilled
    day = date.fromisoformat(window[3])
    raw = load_dataset(data_dir / "raw")
    expected = compute_features("delivery", raw, [day]).sort("seller_id")
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as conn:
        stored = conn.execute(
            "SELECT * FROM features.seller_delivery WHERE reference_date = ? ORDER BY seller_id",
            [day],
        ).pl()
    assert stored.select(expected.columns).equals(expected)


def test_rematerializing_part_of_the_range_replaces_exactly_it(
    backfilled, data_dir, instance_with_raw
):
    job, window, _ = backfilled
    before = _counts(data_dir / "warehouse.duckdb")
    result = job.execute_in_process(instance=instance_with_raw, partition_key=window[5])
    assert result.success
    assert _counts(data_dir / "warehouse.duckdb") == before
    (materialization,) = _materializations(result, "sales")
    rows = before["sales"][date.fromisoformat(window[5])]
    assert materialization.metadata["dagster/partition_row_count"].value == rows


def test_feature_checks_pass(backfilled):
    _, _, result = backfilled
    evaluations = result.get_asset_check_evaluations()
    assert {e.asset_key.path[-1] for e in evaluations} == {f"seller_{f}" for f in FEATURE_FAMILIES}
    assert all(e.passed for e in evaluations)


def test_one_family_materializes_alone(definitions, data_dir, instance_with_raw):
    """A subset of the multi-asset (one table over a range) writes and records that
    table only, and its check only runs."""
    job = definitions.resolve_job_def("build_feature_store")
    keys = registered_dates(instance_with_raw)[-12:-9]
    reviews = dg.AssetKey(["features", "seller_reviews"])
    result = job.execute_in_process(
        instance=instance_with_raw,
        tags=range_tags(keys[0], keys[-1]),
        asset_selection=[reviews],
    )
    assert result.success
    events = result.get_asset_materialization_events()
    assert {e.asset_key for e in events} == {reviews}
    assert sorted(e.partition for e in events) == keys
    assert set(_counts(data_dir / "warehouse.duckdb")["reviews"]) >= {
        date.fromisoformat(k) for k in keys
    }
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.asset_key == reviews and evaluation.passed


def test_every_family_has_a_partitioned_asset(definitions):
    for family in FEATURE_FAMILIES:
        asset = definitions.resolve_assets_def(dg.AssetKey(["features", f"seller_{family}"]))
        assert asset.partitions_def == dg.DynamicPartitionsDefinition(name="reference_date")
        assert asset.backfill_policy == dg.BackfillPolicy.single_run()
        # The lineage the UI shows: each table on the raw tables its family reads.
        key = dg.AssetKey(["features", f"seller_{family}"])
        assert asset.asset_deps[key] == {raw_asset_key(t) for t in FAMILY_SOURCES[family]}
        assert asset.specs_by_key[key].group_name == "feature_store"


@pytest.mark.slow
def test_batched_backfill_writes_the_same_rows(
    definitions, data_dir, monkeypatch, instance_with_raw
):
    """A range split into several batches (tiny batch size) stores exactly what one pass
    stores, in one run and one transaction per table."""
    instance = instance_with_raw
    job = definitions.resolve_job_def("build_feature_store")
    keys = registered_dates(instance)[-40:-25]
    assert job.execute_in_process(instance=instance, tags=range_tags(keys[0], keys[-1])).success
    one_pass = _counts(data_dir / "warehouse.duckdb")
    monkeypatch.setenv("OLIST_CHURN_FEATURE_BATCH_ROWS", "1")
    result = job.execute_in_process(
        instance=instance,
        tags=range_tags(keys[0], keys[-1]),
        resources={"settings": churn_settings()},  # as loaded with the tiny batch size
    )
    assert result.success
    *_, materialization = _materializations(result, "sales")
    assert materialization.metadata["batches"].value == 3  # 15 dates, 7 per batch at least
    assert _counts(data_dir / "warehouse.duckdb") == one_pass


def test_feature_checks_are_one_step_that_evaluates_what_the_run_built(
    definitions, instance_with_raw
):
    """The six checks run as one step; a run that builds one table evaluates its check
    only, and it reports on that table."""
    job = definitions.resolve_job_def("build_feature_store")
    assert [n for n in job.graph.node_dict if "check" in n] == ["feature_table_checks"]
    sales = dg.AssetKey(["features", "seller_sales"])
    result = job.execute_in_process(
        instance=instance_with_raw,
        partition_key=registered_dates(instance_with_raw)[-3],
        asset_selection=[sales],
    )
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.asset_key == sales and evaluation.passed
    assert evaluation.metadata["duplicate_keys"].value == 0


def test_a_daily_run_reports_what_it_did_to_the_lifetime_state(definitions, instance_with_raw):
    """A one-date run catches the per-seller lifetime state up with the raw loads since the
    last run and says so on the table that reads it; the next run finds nothing to do."""
    job = definitions.resolve_job_def("build_feature_store")
    sales = dg.AssetKey(["features", "seller_sales"])
    reports = []
    for day in registered_dates(instance_with_raw)[-2:]:
        result = job.execute_in_process(
            instance=instance_with_raw, partition_key=day, asset_selection=[sales]
        )
        (materialization,) = _materializations(result, "sales")
        reports.append(materialization.metadata["lifetime_state"].value)
    assert all(isinstance(report, str) and report for report in reports)
    assert reports[1] == "unchanged (no sale changed since the last run)"


def test_feature_checks_look_at_the_run_dates_and_all_of_them_when_run_alone(
    data_dir, backfilled, instance_with_raw
):
    """A daily run checks the date it wrote, not the whole history; the checks launched
    alone (no partition) still check every date. A NaN planted in another date tells."""
    job, window, _ = backfilled
    day, other = window[-1], window[0]
    warehouse = str(data_dir / "warehouse.duckdb")
    with duckdb.connect(warehouse) as conn:
        column = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "'features' AND table_name = 'seller_sales' AND data_type = 'DOUBLE' LIMIT 1"
        ).fetchone()[0]
        seller, value = conn.execute(
            f'SELECT seller_id, "{column}" FROM features.seller_sales '
            f'WHERE reference_date = ? AND "{column}" IS NOT NULL LIMIT 1',
            [other],
        ).fetchone()
        planted = (
            f'UPDATE features.seller_sales SET "{column}" = ? '
            "WHERE reference_date = ? AND seller_id = ?"
        )
        conn.execute(planted, [float("nan"), other, seller])
    try:
        daily = job.execute_in_process(instance=instance_with_raw, partition_key=day)
        sales = dg.AssetKey(["features", "seller_sales"])
        (evaluation,) = [e for e in daily.get_asset_check_evaluations() if e.asset_key == sales]
        assert evaluation.passed
        assert evaluation.metadata["dates_checked"].value == f"{day} .. {day}"
        alone = job.get_subset(
            asset_selection=set(),
            asset_check_selection={dg.AssetCheckKey(sales, "one_finite_row_per_seller_and_date")},
        ).execute_in_process(instance=instance_with_raw, raise_on_error=False)
        (evaluation,) = alone.get_asset_check_evaluations()
        assert not evaluation.passed
        assert evaluation.metadata["rows_with_nan_or_inf"].value == 1
        assert evaluation.metadata["dates_checked"].value == "all"
    finally:
        with duckdb.connect(warehouse) as conn:
            conn.execute(planted, [value, other, seller])


def test_a_changed_window_marks_the_feature_partitions_stale(
    backfilled, definitions, instance_with_raw
):
    """Each feature table's code version carries its family's code and the window: with
    another window, Dagster (whose own staleness the UI shows) marks the partitions stale."""
    # Test-only: Dagster's staleness resolver, the one behind the UI's "stale" badge.
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from olist_churn_dagster.defs.features.assets import feature_tables
    from olist_churn_dagster.lib.versions import feature_code_version

    _, window, _ = backfilled
    key = dg.AssetKey(["features", "seller_sales"])
    assert definitions.resolve_asset_graph().get(key).code_version == feature_code_version(
        "sales", window_days=180, horizon_days=45
    )

    def with_window(days: int) -> dg.AssetsDefinition:
        def versioned(spec: dg.AssetSpec) -> dg.AssetSpec:
            family = spec.key.path[-1].removeprefix("seller_")
            return spec.replace_attributes(
                code_version=feature_code_version(family, window_days=days, horizon_days=45)
            )

        return feature_tables.map_asset_specs(versioned)

    for days, expected in ((180, StaleStatus.FRESH), (90, StaleStatus.STALE)):
        resolver = get_stale_status_resolver(instance_with_raw, [with_window(days)])
        assert resolver.get_status(key, window[0]) == expected, days
        if expected == StaleStatus.STALE:
            (cause,) = resolver.get_stale_causes(key, window[0])
            assert cause.reason == "has a new code version"
