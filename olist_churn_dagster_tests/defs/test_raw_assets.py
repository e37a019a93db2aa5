from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from olist_churn_dagster.lib.features import incremental
from olist_churn_dagster.lib.ingest.schema import TABLES
from olist_churn_dagster.lib.warehouse import transaction


def _table_counts(warehouse: Path) -> dict[str, int]:
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        return {
            name: conn.execute(f"SELECT count(*) FROM raw.{name}").fetchone()[0] for name in TABLES
        }


@pytest.fixture(scope="module")
def loaded(definitions: dg.Definitions, data_dir: Path) -> dg.ExecuteInProcessResult:
    result = definitions.resolve_job_def("load_raw_tables").execute_in_process(
        instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    return result


def test_raw_tables_match_the_files(loaded, data_dir: Path):
    counts = _table_counts(data_dir / "warehouse.duckdb")
    for name, spec in TABLES.items():
        path = data_dir / "raw" / spec.file_name
        expected = pl.read_csv(path, infer_schema=False).height if path.exists() else 0
        assert counts[name] == expected, name
    assert counts["orders"] > 0


def test_raw_types_follow_the_contract(loaded, data_dir: Path):
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as conn:
        sellers = conn.execute("SELECT * FROM raw.sellers").pl()
        orders = conn.execute("SELECT * FROM raw.orders LIMIT 5").pl()
    assert sellers.schema == TABLES["sellers"].schema
    assert orders.schema == TABLES["orders"].schema
    assert sellers["seller_zip_code_prefix"].str.len_chars().min() == 5


def test_raw_materializations_carry_metadata(loaded):
    event = loaded.asset_materializations_for_node("raw_tables")
    by_key = {e.asset_key: e.metadata for e in event}
    orders = by_key[dg.AssetKey(["raw", "orders"])]
    assert orders["dagster/row_count"].value > 0
    preview = orders["preview"]
    assert isinstance(preview, dg.TableMetadataValue) and len(preview.records) == 10
    assert "order_id" in [c.name for c in preview.schema.columns]
    assert "first_timestamp" in orders and "last_timestamp" in orders


def test_raw_checks_pass_on_generated_data(loaded):
    evaluations = loaded.get_asset_check_evaluations()
    assert len(evaluations) >= 10
    failed = [e for e in evaluations if not e.passed]
    assert failed == []


def test_bad_source_is_refused_and_changes_nothing(loaded, definitions, data_dir, tmp_path):
    before = _table_counts(data_dir / "warehouse.duckdb")
    bad = tmp_path / "bad"
    shutil.copytree(data_dir / "raw", bad)
    (bad / TABLES["order_items"].file_name).unlink()
    result = definitions.resolve_job_def("load_raw_tables").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        run_config={"ops": {"raw_tables": {"config": {"source": str(bad)}}}},
        raise_on_error=False,
    )
    assert not result.success
    failure = result.failure_data_for_node("raw_tables")
    assert TABLES["order_items"].file_name in failure.error.to_string()
    assert _table_counts(data_dir / "warehouse.duckdb") == before


def test_a_raw_load_logs_its_sale_changes_and_leaves_the_lifetime_state(
    loaded, definitions, data_dir
):
    """The per-seller lifetime state belongs to the feature run: a raw load writes none of
    it and logs that the sale tables were replaced whole, for the next feature run."""
    warehouse = data_dir / "warehouse.duckdb"
    with transaction(warehouse) as conn:
        last = conn.execute("SELECT max(order_purchase_timestamp) FROM raw.orders").fetchone()[0]
        cutoff = incremental.epoch_day(last.date()) - 200
        state = incremental.state_at(conn, cutoff, window_days=180, horizon_days=45)
    result = definitions.resolve_job_def("load_raw_tables").execute_in_process(
        instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        kept = conn.execute(f"SELECT * FROM {incremental.LIFETIME_TABLE}").pl()
        assert incremental.state_cutoff(conn) == cutoff
        logged = conn.execute(f"SELECT * FROM {incremental.CHANGES_TABLE}").fetchall()
    assert_frame_equal(kept, state, check_exact=True)
    assert logged == [(None, None)]  # state_at read the earlier entries
