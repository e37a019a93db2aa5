"""The six seller feature tables, partitioned by reference date.

A backfill of any number of dates is one run: each family's timeline is built once from
the raw history, then read in batches of about OLIST_CHURN_FEATURE_BATCH_ROWS output rows
(so memory stays bounded and the cost follows the data), and exactly those partitions are
replaced in one transaction.
"""

import itertools
from datetime import date

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from olist_churn_dagster.defs.partitions import PARTITION_METADATA, reference_date_partitions
from olist_churn_dagster.defs.raw.assets import raw_asset_key
from olist_churn_dagster.defs.warehouse import (
    WAREHOUSE_POOL,
    FrameBatches,
    table_asset_key,
    warehouse_transaction,
)
from olist_churn_dagster.lib.calendar import date_batches
from olist_churn_dagster.lib.features import (
    FEATURE_FAMILIES,
    active_seller_counts,
    feature_batches,
    incremental,
    source_columns,
    source_tables,
)
from olist_churn_dagster.lib.markdown import frame_to_markdown
from olist_churn_dagster.lib.sales import sale_items
from olist_churn_dagster.lib.settings import load_settings
from olist_churn_dagster.lib.tables import RAW_SCHEMA, feature_table
from olist_churn_dagster.lib.warehouse import read_tables

FEATURE_GROUP = "feature_store"

# The raw tables each family reads (orders and items always: they define the sales).
FAMILY_SOURCES: dict[str, tuple[str, ...]] = {
    family: tuple(sorted({"orders", "order_items", *source_tables(family)}))
    for family in FEATURE_FAMILIES
}

FAMILY_DESCRIPTIONS: dict[str, str] = {
    "sales": "Orders, revenue, ticket and price stats, recency, tenure, trend and regularity.",
    "reviews": "Review scores of the seller's orders, share reviewed, low scores and trend.",
    "customers": "Distinct customers and states, repeat customers, share of orders per state.",
    "delivery": "Late, canceled and overdue shares, freight, delivery times against promise.",
    "payments": "Payments per type (count, value, share), installments.",
    "products": "Catalogue breadth, photos, sizes and weights, share of items per category.",
}


def feature_asset_key(family: str) -> dg.AssetKey:
    return table_asset_key(feature_table(family))


def partition_dates(context: dg.AssetExecutionContext) -> list[date]:
    """The run's reference dates: one partition, or every key of a single-run range."""
    return sorted(date.fromisoformat(key) for key in context.partition_keys)


def _one_date(
    context: dg.AssetExecutionContext, family: str, day: date, warehouse: DuckDBResource
) -> pl.DataFrame:
    """One date (the daily run): from its window's rows and the per-seller state kept in
    the warehouse (`lib.features.incremental`), not from all history; same rows."""
    settings = load_settings()
    with warehouse_transaction(warehouse.database) as conn:
        frame = incremental.features_at(
            conn,
            family,
            day,
            window_days=settings.feature_window_days,
            horizon_days=settings.churn_horizon_days,
        )
    context.add_output_metadata(
        {
            "reference_dates": 1,
            "first_date": str(day),
            "last_date": str(day),
            "computed_from": "the window's rows and the per-seller state",
            "preview": dg.MetadataValue.md(frame_to_markdown(frame)),
        }
    )
    return frame


def _feature_asset(family: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=feature_asset_key(family),
        group_name=FEATURE_GROUP,
        description=FAMILY_DESCRIPTIONS[family]
        + " One row per active seller and reference date; only data before the date.",
        partitions_def=reference_date_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[raw_asset_key(t) for t in FAMILY_SOURCES[family]],
        metadata=PARTITION_METADATA,
        kinds={"duckdb", "polars"},
        pool=WAREHOUSE_POOL,
    )
    def _asset(context: dg.AssetExecutionContext, warehouse: DuckDBResource) -> FrameBatches:
        settings = load_settings()
        dates = partition_dates(context)
        if len(dates) == 1:
            return FrameBatches([_one_date(context, family, dates[0], warehouse)])
        with warehouse.get_connection() as conn:
            raw = read_tables(
                conn, RAW_SCHEMA, FAMILY_SOURCES[family], columns=source_columns(family)
            )
        sales = sale_items(raw["orders"], raw["order_items"])  # once, for every batch
        counts = active_seller_counts(sales, dates, horizon_days=settings.churn_horizon_days)
        batches = date_batches(
            dates, rows_per_date=max(counts), max_rows=settings.feature_batch_rows
        )
        frames = feature_batches(
            family,
            raw,
            batches,
            window_days=settings.feature_window_days,
            horizon_days=settings.churn_horizon_days,
            sales=sales,
        )
        del raw, sales  # the frames hold what they need (see `feature_batches`)
        first = next(frames)  # builds the family's timeline, for every batch
        summary = {  # recorded once per run by the IO manager, not once per partition
            "reference_dates": len(dates),
            "first_date": str(dates[0]),
            "last_date": str(dates[-1]),
            "batches": len(batches),
            "preview": dg.MetadataValue.md(frame_to_markdown(first)),
        }
        return FrameBatches(itertools.chain([first], frames), summary)

    return _asset


feature_assets = [_feature_asset(family) for family in FEATURE_FAMILIES]
