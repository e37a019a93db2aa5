"""The six seller feature tables, partitioned by reference date.

One subsettable multi-asset (each table still its own asset, with its own raw dependencies
and checks) that writes its own tables through `lib.features.writer`: a backfill of any
number of dates is one run, each family written in one transaction, and each committed
family is handed to Dagster while the next one computes, so the compute overlaps Dagster's
recording of the partitions (one event and one commit per date).
"""

from collections.abc import Iterator
from datetime import date

import dagster as dg

from olist_churn_dagster.defs.metadata import table_value
from olist_churn_dagster.defs.partitions import PARTITION_METADATA, reference_date_partitions
from olist_churn_dagster.defs.raw.assets import raw_asset_key
from olist_churn_dagster.defs.settings import ChurnSettings
from olist_churn_dagster.defs.versions import feature_version
from olist_churn_dagster.defs.warehouse import (
    WAREHOUSE_POOL,
    WarehouseResource,
    column_schema,
    table_asset_key,
)
from olist_churn_dagster.lib.features import FEATURE_CATALOGUE, FEATURE_FAMILIES
from olist_churn_dagster.lib.features.writer import (
    FAMILY_SOURCES,
    ONE_DATE_SOURCE,
    FamilyWritten,
    FeatureSettings,
    write_features,
)
from olist_churn_dagster.lib.tables import feature_table

FEATURE_GROUP = "feature_store"

FAMILY_DESCRIPTIONS: dict[str, str] = {
    "sales": "Orders, revenue, ticket and price stats, recency, tenure, trend and regularity.",
    "reviews": "Review scores of the seller's orders, share reviewed, low scores and trend.",
    "customers": "Distinct customers and states, repeat customers, share of orders per state.",
    "delivery": "Late, canceled and overdue shares, freight, delivery times against promise.",
    "payments": "Payments per type (count, value, share), installments.",
    "products": "Catalogue breadth, photos, sizes and weights, share of items per category.",
}
# Each column's meaning and unit, shown with the tables' column schema.
COLUMN_DESCRIPTIONS: dict[str, str] = {
    spec.name: f"{spec.meaning} ({spec.unit}, window {spec.window})" for spec in FEATURE_CATALOGUE
}


def feature_asset_key(family: str) -> dg.AssetKey:
    return table_asset_key(feature_table(family))


def partition_dates(context: dg.AssetExecutionContext) -> list[date]:
    """The run's reference dates: one partition, or every key of a single-run range."""
    return sorted(date.fromisoformat(key) for key in context.partition_keys)


@dg.multi_asset(
    name="feature_tables",
    specs=[
        dg.AssetSpec(
            feature_asset_key(family),
            group_name=FEATURE_GROUP,
            description=FAMILY_DESCRIPTIONS[family]
            + " One row per active seller and reference date; only data before the date.",
            deps=[raw_asset_key(t) for t in FAMILY_SOURCES[family]],
            metadata=PARTITION_METADATA,
            kinds={"duckdb", "polars"},
            code_version=feature_version(family),
        )
        for family in FEATURE_FAMILIES
    ],
    partitions_def=reference_date_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    can_subset=True,
    pool=WAREHOUSE_POOL,
)
def feature_tables(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: ChurnSettings
) -> Iterator[dg.MaterializeResult]:
    """The selected feature tables for the run's reference dates."""
    families = [f for f in FEATURE_FAMILIES if feature_asset_key(f) in context.selected_asset_keys]
    written = write_features(
        warehouse.get_connection,
        warehouse.transaction,
        families,
        partition_dates(context),
        FeatureSettings(
            settings.feature_window_days, settings.churn_horizon_days, settings.feature_batch_rows
        ),
    )
    for family in written:
        if family.lifetime_state:
            context.log.info(f"per-seller lifetime state: {family.lifetime_state}")
        yield _result(context, family)


def _metadata(written: FamilyWritten) -> dict[str, object]:
    dates = written.dates
    how = {"batches": written.batches} if written.batches else {"computed_from": ONE_DATE_SOURCE}
    if written.lifetime_state:
        how["lifetime_state"] = written.lifetime_state
    rows = (
        {"dagster/partition_row_count": written.rows}
        if len(dates) == 1
        else {"rows_written_for_range": written.rows, "partitions_in_range": len(dates)}
    )
    return {
        "reference_dates": len(dates),
        "first_date": str(dates[0]),
        "last_date": str(dates[-1]),
        **how,
        "preview": table_value(written.preview),
        "dagster/column_schema": column_schema(written.schema, COLUMN_DESCRIPTIONS),
        "dagster/table_name": written.table,
        **rows,
    }


def _result(context: dg.AssetExecutionContext, written: FamilyWritten) -> dg.MaterializeResult:
    """A committed table's materialization. Dagster copies a result's metadata onto the
    event of every partition it covers; over a range it goes on the partition whose event
    Dagster records last, which the UI shows as the table's latest materialization."""
    key, metadata = feature_asset_key(written.family), _metadata(written)
    if len(written.dates) == 1:
        return dg.MaterializeResult(asset_key=key, metadata=metadata)
    # Dagster logs a range's partitions in the order of the output's partitions subset (a
    # set, not date order), built from the run's keys as here.
    subset = reference_date_partitions.empty_subset().with_partition_keys(context.partition_keys)
    *_, last = subset.get_partition_keys()
    context.add_asset_metadata(metadata, asset_key=key, partition_key=last)
    return dg.MaterializeResult(asset_key=key)
