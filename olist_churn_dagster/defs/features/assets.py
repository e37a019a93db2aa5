"""The six seller feature tables, partitioned by reference date.

A backfill of any number of dates is one run: each family's timeline is built once from
the raw history, then read in batches of about OLIST_CHURN_FEATURE_BATCH_ROWS output rows
(so memory stays bounded and the cost follows the data), and exactly those partitions are
replaced in one transaction.

The six tables are one subsettable multi-asset (each still its own asset, with its own raw
dependencies and checks) that writes its own tables, with the IO manager's delete-then-
insert and metadata (`defs.warehouse.replace_partitions`), so that one family is computed
and written while Dagster records the previous one's partitions (see `feature_tables`).
"""

import contextvars
import itertools
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date

import dagster as dg
import polars as pl

from olist_churn_dagster.defs.partitions import PARTITION_METADATA, reference_date_partitions
from olist_churn_dagster.defs.raw.assets import raw_asset_key
from olist_churn_dagster.defs.warehouse import (
    WAREHOUSE_POOL,
    FrameBatches,
    WarehouseResource,
    replace_partitions,
    table_asset_key,
)
from olist_churn_dagster.lib.features import (
    FEATURE_FAMILIES,
    Backfill,
    feature_batches,
    incremental,
    source_columns,
    source_tables,
)
from olist_churn_dagster.lib.markdown import frame_to_markdown
from olist_churn_dagster.lib.sales import sale_items
from olist_churn_dagster.lib.settings import load_settings
from olist_churn_dagster.lib.tables import RAW_SCHEMA, feature_table
from olist_churn_dagster.lib.threads import lower_thread_priority, read_ahead
from olist_churn_dagster.lib.warehouse import one_thread, read_tables

FEATURE_GROUP = "feature_store"
PARTITION_COLUMN = PARTITION_METADATA["partition_expr"]

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
    families: list[str], key: str, warehouse: WarehouseResource
) -> dict[str, dict[str, object]]:
    """One date (the daily run): from its window's rows and the per-seller state kept in
    the warehouse (`lib.features.incremental`), not from all history; same rows. Every
    family is computed and written in one transaction (one commit and checkpoint instead
    of one per family: on a large warehouse they cost about as much as a family's
    compute); returns each family's metadata to record."""
    settings = load_settings()
    day = date.fromisoformat(key)
    written: dict[str, dict[str, object]] = {}
    with warehouse.transaction() as conn:
        for family in families:
            frame = incremental.features_at(
                conn,
                family,
                day,
                window_days=settings.feature_window_days,
                horizon_days=settings.churn_horizon_days,
            )
            summary = {
                "reference_dates": 1,
                "first_date": key,
                "last_date": key,
                "computed_from": "the window's rows and the per-seller state",
                "preview": dg.MetadataValue.md(frame_to_markdown(frame)),
            }
            written[family] = replace_partitions(
                conn, feature_table(family), PARTITION_COLUMN, [key], FrameBatches([frame], summary)
            )
    return written


# The order in which a range computes the families: the cheapest first, since nothing
# overlaps the first family's compute (Dagster has no event of the step to record yet);
# each later one is computed while Dagster records the previous one's partitions. Reviews
# take less time than sales.
RANGE_ORDER: tuple[str, ...] = ("reviews", *(f for f in FEATURE_FAMILIES if f != "reviews"))


def _read_raw(
    family: str, warehouse: WarehouseResource
) -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
    """The raw tables a family reads (only its columns, see `source_columns`) and their
    sales (`sale_items`), which every batch of the family uses."""
    with warehouse.get_connection() as conn:
        raw = read_tables(conn, RAW_SCHEMA, FAMILY_SOURCES[family], columns=source_columns(family))
    return raw, sale_items(raw["orders"], raw["order_items"])


@dataclass
class _Shared:
    """What the families of one range share: the `lib.features.Backfill` the first
    family's `_range` builds, and, with a `reader` thread, the next family's raw tables,
    read while the current family writes (its single-threaded write of a wide table
    leaves a core idle; a read during a timeline's build would add to its peak memory)."""

    families: list[str] = field(default_factory=list)  # in the order the range runs them
    reader: ThreadPoolExecutor | None = None
    backfill: Backfill | None = None
    reads: dict[str, Future] = field(default_factory=dict)

    def raw(self, family: str, warehouse: WarehouseResource) -> tuple[dict, pl.DataFrame]:
        """The family's raw tables and sales: read ahead, or read now."""
        ahead = self.reads.pop(family, None)
        return ahead.result() if ahead else _read_raw(family, warehouse)

    def read_next(self, family: str, warehouse: WarehouseResource) -> None:
        """Starts reading the raw tables of the family after `family`, if any."""
        if self.reader is None:
            return
        after = self.families[self.families.index(family) + 1 :]
        if after:
            run = contextvars.copy_context().run  # the step's context, as for `_range`
            self.reads[after[0]] = self.reader.submit(run, _read_raw, after[0], warehouse)


def _range(
    family: str, keys: list[str], warehouse: WarehouseResource, shared: _Shared
) -> dict[str, object]:
    """Every date of a range: the family's timeline is built once from the raw history
    (here, on the first batch), each later batch is computed while the previous one is
    written (by one DuckDB thread, so the compute keeps a core), and the range's rows are
    replaced in one transaction. What the range's families share (the sellers' ranks and
    sale runs, the batches' sizes) is built by the first and kept in `shared` for the
    next, which also reads the next family's raw tables while this one writes. Returns the
    metadata to record."""
    settings = load_settings()
    dates = sorted(date.fromisoformat(key) for key in keys)
    raw, sales = shared.raw(family, warehouse)
    if shared.backfill is None:
        shared.backfill = Backfill(
            raw, dates, horizon_days=settings.churn_horizon_days, sales=sales
        )
    batches = shared.backfill.batches(settings.feature_batch_rows)
    # Each batch is computed while the previous one is written.
    frames = read_ahead(
        feature_batches(
            family,
            raw,
            batches,
            window_days=settings.feature_window_days,
            horizon_days=settings.churn_horizon_days,
            sales=sales,
            shared=shared.backfill,
        )
    )
    del raw, sales  # the frames hold what they need (see `feature_batches`)
    first = next(frames)  # builds the family's timeline, for every batch
    if len(batches) > 1:  # one batch is written too soon for a read to overlap it
        shared.read_next(family, warehouse)
    summary = {  # recorded once per run, not once per partition (see `_result`)
        "reference_dates": len(dates),
        "first_date": str(dates[0]),
        "last_date": str(dates[-1]),
        "batches": len(batches),
        "preview": dg.MetadataValue.md(frame_to_markdown(first)),
    }
    with warehouse.transaction() as conn, one_thread(conn):  # the compute has the cores
        return replace_partitions(
            conn,
            feature_table(family),
            PARTITION_COLUMN,
            keys,
            FrameBatches(itertools.chain([first], frames), summary),
        )


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
        )
        for family in FEATURE_FAMILIES
    ],
    partitions_def=reference_date_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    can_subset=True,
    pool=WAREHOUSE_POOL,
)
def feature_tables(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> Iterator[dg.MaterializeResult]:
    """The selected feature tables. Over a range, a background thread computes and writes
    one family after the other (polars and DuckDB release the GIL) while this generator
    hands each committed table to Dagster, which records its partitions' materializations
    (one event and one commit per date): the tables' compute and writes overlap Dagster's
    bookkeeping instead of adding to it. The thread holds one family's timeline at a time,
    and runs at a lower CPU priority, so that on two cores its compute does not slow the
    recording (see `lower_thread_priority`); a second one reads the next family's raw
    tables while the current family writes (see `_Shared`)."""
    keys = sorted(context.partition_keys, key=date.fromisoformat)
    families = [f for f in FEATURE_FAMILIES if feature_asset_key(f) in context.selected_asset_keys]
    if len(keys) == 1:
        for family, metadata in _one_date(families, keys[0], warehouse).items():
            yield _result(context, family, keys, metadata)
        return
    families = sorted(families, key=RANGE_ORDER.index)
    pool, reader = _background_thread("feature-tables"), _background_thread("feature-reads")
    try:
        # Each in the step's context, so a locked warehouse still asks Dagster for a retry.
        shared = _Shared(families=families, reader=reader)  # filled in the threads
        written = [
            pool.submit(contextvars.copy_context().run, _range, family, keys, warehouse, shared)
            for family in families
        ]
        for family, metadata in zip(families, written, strict=True):
            yield _result(context, family, keys, metadata.result())
    finally:  # a failed step writes no further table
        pool.shutdown(wait=True, cancel_futures=True)
        reader.shutdown(wait=True, cancel_futures=True)


def _background_thread(name: str) -> ThreadPoolExecutor:
    """One worker thread at a lower CPU priority (see `lower_thread_priority`)."""
    return ThreadPoolExecutor(
        max_workers=1, thread_name_prefix=name, initializer=lower_thread_priority
    )


def _result(
    context: dg.AssetExecutionContext, family: str, keys: list[str], metadata: dict[str, object]
) -> dg.MaterializeResult:
    """A committed table's materialization. Dagster copies a result's metadata onto the
    event of every partition it covers: a backfill would store a copy of the column schema
    and the preview per date. Over a range it goes on the partition whose
    event Dagster records last (see below), which the UI shows as the table's latest
    materialization."""
    key = feature_asset_key(family)
    if len(keys) == 1:
        return dg.MaterializeResult(asset_key=key, metadata=metadata)
    # Dagster logs a range's partitions in the order of the output's partitions subset (a
    # set, not date order), built from the run's keys as here.
    subset = reference_date_partitions.empty_subset().with_partition_keys(context.partition_keys)
    *_, last = subset.get_partition_keys()
    context.add_asset_metadata(metadata, asset_key=key, partition_key=last)
    return dg.MaterializeResult(asset_key=key)
