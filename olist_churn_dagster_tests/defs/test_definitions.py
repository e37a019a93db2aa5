from __future__ import annotations

import tomllib
from datetime import date, timedelta

import dagster as dg
import yaml

from olist_churn_dagster.defs.partitions import registered_dates
from olist_churn_dagster.lib.ingest.loader import purchase_date_range
from olist_churn_dagster.lib.ingest.schema import TABLES
from olist_churn_dagster_tests.conftest import DEMO_END, DEMO_START, REPO_ROOT


def test_workspace_and_pyproject_point_at_the_same_module():
    workspace = yaml.safe_load((REPO_ROOT / "workspace.yaml").read_text())
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    module = workspace["load_from"][0]["python_module"]["module_name"]
    assert module == pyproject["tool"]["dagster"]["module_name"]
    assert module == pyproject["tool"]["dg"]["project"]["code_location_target_module"]
    # One location name everywhere, or Dagster warns on every load in every process.
    name = workspace["load_from"][0]["python_module"]["location_name"]
    assert name == pyproject["tool"]["dagster"]["code_location_name"]
    assert name == pyproject["tool"]["dg"]["project"]["code_location_name"]


def test_definitions_load_with_every_raw_table(definitions: dg.Definitions):
    keys = {spec.key for spec in definitions.resolve_all_asset_specs()}
    for name in TABLES:
        assert dg.AssetKey(["raw", name]) in keys
    for family in ("sales", "reviews", "customers", "delivery", "payments", "products"):
        assert dg.AssetKey(["features", f"seller_{family}"]) in keys
    definitions.resolve_all_job_defs()  # every job resolves against the assets


def test_a_raw_load_registers_its_reference_dates(definitions, data_dir, instance_with_raw):
    first_purchase, last_purchase = purchase_date_range(data_dir / "raw")
    assert first_purchase >= DEMO_START and last_purchase == DEMO_END
    keys = registered_dates(instance_with_raw)
    first, last = date.fromisoformat(keys[0]), date.fromisoformat(keys[-1])
    # First date has a full 180-day window behind it; the last is the data's as-of date
    # (the day after its last purchase), not today or later.
    assert first == first_purchase + timedelta(days=180)
    assert last == DEMO_END + timedelta(days=1)
    assert keys == [(first + timedelta(days=i)).isoformat() for i in range(len(keys))]
    (event,) = [
        e
        for e in instance_with_raw.get_latest_materialization_events(
            [dg.AssetKey(["raw", "orders"])]
        ).values()
    ]
    metadata = event.asset_materialization.metadata
    assert metadata["as_of_date"].value == last.isoformat()


def test_reference_dates_are_dynamic_partitions(definitions: dg.Definitions):
    spec = next(
        s
        for s in definitions.resolve_all_asset_specs()
        if s.key == dg.AssetKey(["features", "seller_sales"])
    )
    assert isinstance(spec.partitions_def, dg.DynamicPartitionsDefinition)
    assert spec.partitions_def.name == "reference_date"


def test_raw_assets_use_the_warehouse_pool(definitions: dg.Definitions):
    raw = definitions.resolve_assets_def(dg.AssetKey(["raw", "orders"]))
    assert all(node.pool == "warehouse" for node in [raw.node_def])
