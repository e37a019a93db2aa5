"""The six seller feature tables, partitioned by reference date.

A backfill of any number of dates is one run: each family's timeline is built once from
the raw history, then read in batches of about OLIST_CHURN_FEATURE_BATCH_ROWS output rows
(so memory stays bounded and the cost follows the data), and exactly those partitions are
replaced in one transaction.

The six tables are one subsettable multi-asset (each still its own asset, with its own raw
dependencies and checks) so that one family is computed while Dagster records the
previous one's partitions (see `feature_tables`).
"""

import contextvars
import itertools
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date

import dagster as dg
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


def _one_date(family: str, day: date, warehouse: DuckDBResource) -> FrameBatches:
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
    summary = {
        "reference_dates": 1,
        "first_date": str(day),
        "last_date": str(day),
        "computed_from": "the window's rows and the per-seller state",
        "preview": dg.MetadataValue.md(frame_to_markdown(frame)),
    }
    return FrameBatches([frame], summary)


def _range(family: str, dates: list[date], warehouse: DuckDBResource) -> FrameBatches:
    """Every date of a range: the family's timeline is built once from the raw history
    (here, on the first batch), the later batches are computed while they are written."""
    settings = load_settings()
    with warehouse.get_connection() as conn:
        raw = read_tables(conn, RAW_SCHEMA, FAMILY_SOURCES[family])
    sales = sale_items(raw["orders"], raw["order_items"])  # once, for every batch
    counts = active_seller_counts(sales, dates, horizon_days=settings.churn_horizon_days)
    batches = date_batches(dates, rows_per_date=max(counts), max_rows=settings.feature_batch_rows)
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
        ).with_io_manager_key("io_manager")  # outputs are values the IO manager writes
        for family in FEATURE_FAMILIES
    ],
    partitions_def=reference_date_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    can_subset=True,
    pool=WAREHOUSE_POOL,
)
def feature_tables(
    context: dg.AssetExecutionContext, warehouse: DuckDBResource
) -> Iterator[dg.Output]:
    """The selected feature tables, one output each. Dagster writes an output and records
    its partitions' materializations (one event and one commit per date) while this
    generator waits at its `yield`: the next family is computed meanwhile in a background
    thread (polars and DuckDB release the GIL), so compute and bookkeeping overlap. At most
    one family is computed ahead, so at most two families' timelines are held at once."""
    dates = partition_dates(context)
    families = [f for f in FEATURE_FAMILIES if feature_asset_key(f) in context.selected_asset_keys]
    if len(dates) == 1:
        for family in families:
            yield _output(context, family, _one_date(family, dates[0], warehouse))
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="feature-family") as pool:

        def ahead(family: str) -> Future[FrameBatches]:
            # In the step's context, so a locked warehouse still asks Dagster for a retry.
            return pool.submit(contextvars.copy_context().run, _range, family, dates, warehouse)

        following = ahead(families[0])
        for family, after in zip(families, [*families[1:], None], strict=True):
            batches = following.result()
            if after is not None:
                following = ahead(after)
            yield _output(context, family, batches)


def _output(context: dg.AssetExecutionContext, family: str, batches: FrameBatches) -> dg.Output:
    name = context.assets_def.get_output_name_for_asset_key(feature_asset_key(family))
    return dg.Output(batches, output_name=name)
