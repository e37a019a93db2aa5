"""Jobs: the named units an operator launches, schedules and sensors target."""

import dagster as dg

from olist_churn_dagster.defs.partitions import reference_date_partitions

load_raw_tables_job = dg.define_asset_job(
    name="load_raw_tables",
    selection=dg.AssetSelection.groups("raw"),
    description="Load and validate the source files into the raw schema.",
)

feature_store_job = dg.define_asset_job(
    name="build_feature_store",
    selection=dg.AssetSelection.groups("feature_store"),
    partitions_def=reference_date_partitions,
    description="The six feature tables for the selected reference dates (one run per range).",
)

snapshot_job = dg.define_asset_job(
    name="load_snapshot",
    selection=dg.AssetSelection.groups("raw", "feature_store"),
    partitions_def=reference_date_partitions,
    description="Refresh the raw tables from one snapshot and compute that date's partitions.",
)
