"""Writing feature partitions into the warehouse: the pipeline behind the feature assets.

One date (the daily run) is computed from its window's rows and the per-seller state
(`incremental`), every family in one transaction, which first catches the state up with
the raw loads since the last run (`incremental.catch_up`) and reports what it did. A
range of dates is computed from all history (no state), family by family in a background
thread, so that the caller can record one committed family while the next one computes:

- each family's timeline is built once from the raw history and read out in batches of
  about `batch_rows` rows (bounded memory, cost that follows the data);
- each batch is computed while the previous one is written, on one DuckDB thread (the
  compute keeps a core), and the family's rows are replaced in one transaction;
- what the families share (the sellers' ranks, the batches' sizes: `Backfill`; the
  orders, items and sales every family reads) is built or read once, by the first
  family; each family reads its other raw tables in its own turn, never while another
  family's write transaction is open (on a DuckLake such a read was seen to spin without
  end, and on a DuckDB file it cost time: see docs/benchmarks.md).

The background threads run at a lower CPU priority (`lower_thread_priority`) and in the
caller's context (`contextvars`), so a caller that asks for a retry from inside a write
(a locked warehouse) still can.
"""

from __future__ import annotations

import contextvars
import itertools
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date

import duckdb
import polars as pl

from olist_churn_dagster.lib.features import (
    FEATURE_FAMILIES,
    Backfill,
    columns_read,
    feature_batches,
    incremental,
    source_columns,
    source_tables,
)
from olist_churn_dagster.lib.sales import sale_items
from olist_churn_dagster.lib.tables import RAW_SCHEMA, feature_table
from olist_churn_dagster.lib.threads import lower_thread_priority, read_ahead
from olist_churn_dagster.lib.warehouse import one_thread, read_tables, replace_partition_rows

Connect = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]
PARTITION_COLUMN = "reference_date"
ONE_DATE_SOURCE = "the window's rows and the per-seller state"

# The raw tables each family reads (orders and items always: they define the sales).
FAMILY_SOURCES: dict[str, tuple[str, ...]] = {
    family: tuple(sorted(source_tables(family))) for family in FEATURE_FAMILIES
}
# The order in which a range computes the families: the cheapest first, since nothing
# overlaps the first family's compute (the caller has no family to record yet).
RANGE_ORDER: tuple[str, ...] = ("reviews", *(f for f in FEATURE_FAMILIES if f != "reviews"))


@dataclass(frozen=True)
class FeatureSettings:
    window_days: int
    horizon_days: int
    batch_rows: int


@dataclass(frozen=True)
class FamilyWritten:
    """What a committed write left in one family's table, for the caller to report."""

    family: str
    dates: list[date]
    rows: int
    schema: dict[str, pl.DataType]
    preview: pl.DataFrame  # the first rows written
    batches: int | None  # None for one date, computed from its window and the state
    lifetime_state: str | None = None  # one date, a family reading it: `incremental.catch_up`

    @property
    def table(self) -> str:
        return feature_table(self.family)


def write_features(
    read: Connect,
    write: Connect,
    families: Sequence[str],
    dates: Sequence[date],
    settings: FeatureSettings,
) -> Iterator[FamilyWritten]:
    """Replace the partitions of `dates` in each family's table; yields each family once
    its rows are committed. `read` opens a connection, `write` one inside a transaction."""
    days = sorted(dates)
    if len(days) == 1:
        return iter(_write_one_date(write, families, days[0], settings))
    ordered = sorted(families, key=RANGE_ORDER.index)
    return _write_range(read, write, ordered, days, settings)


def _write_one_date(
    write: Connect, families: Sequence[str], day: date, settings: FeatureSettings
) -> list[FamilyWritten]:
    """Every family in one transaction: one commit and checkpoint instead of one each. The
    lifetime state is caught up first, in it: a failed run leaves the raw loads' log."""
    written = []
    kwargs = {"window_days": settings.window_days, "horizon_days": settings.horizon_days}
    with write() as conn:
        caught_up = incremental.catch_up(conn, **kwargs)
        frames = incremental.features_on(conn, families, day, **kwargs)
        for family, frame in frames.items():
            rows, schema = _replace(conn, family, [day], [frame])
            state = caught_up if incremental.needs_state(family, settings.window_days) else None
            preview = _preview(frame)
            written.append(FamilyWritten(family, [day], rows, schema, preview, None, state))
    return written


def _preview(frame: pl.DataFrame, rows: int = 10) -> pl.DataFrame:
    """The first rows, copied: a slice (`head`) would keep the whole batch's buffers alive
    for as long as the caller holds the preview."""
    return pl.DataFrame(frame.head(rows).to_dicts(), schema=frame.schema)


def _replace(
    conn: duckdb.DuckDBPyConnection,
    family: str,
    days: Sequence[date],
    frames: Iterator[pl.DataFrame] | list[pl.DataFrame],
) -> tuple[int, dict[str, pl.DataType]]:
    keys = [day.isoformat() for day in days]
    return replace_partition_rows(conn, feature_table(family), PARTITION_COLUMN, keys, frames)


SALE_TABLES = ("orders", "order_items")  # what every family reads: read once per range


@dataclass
class RangeState:
    """What the families of one range share: the `Backfill` the first family builds, and
    the orders and items every family reads (with all of the range's families' columns)
    and their sales, read by the first family (before any write: see the module's note)."""

    read: Connect
    families: Sequence[str]
    backfill: Backfill | None = None
    sale_tables: dict[str, pl.DataFrame] | None = None
    sales: pl.DataFrame | None = None
    failed: bool = False  # a family failed: the ones queued after it do not start

    def shared_sales(self) -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
        if self.sale_tables is None or self.sales is None:
            columns = columns_read(self.families)
            with self.read() as conn:
                self.sale_tables = read_tables(conn, RAW_SCHEMA, SALE_TABLES, columns=columns)
            self.sales = sale_items(self.sale_tables["orders"], self.sale_tables["order_items"])
        return self.sale_tables, self.sales


def read_family_sources(
    state: RangeState, family: str
) -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
    """The raw tables a family reads (only its columns) and their sales, which every batch
    of the family uses: the orders, items and sales as the range shares them (the
    family's columns of them), the other tables read now."""
    columns = source_columns(family)
    shared, sales = state.shared_sales()
    others = [t for t in FAMILY_SOURCES[family] if t not in SALE_TABLES]
    with state.read() as conn:
        raw = read_tables(conn, RAW_SCHEMA, others, columns=columns)
    raw |= {t: shared[t].select(columns[t]) for t in SALE_TABLES}
    # `sale_items` of the family's own columns: its items', then the purchase time and day
    extra = [c for c in sales.columns if c not in shared["order_items"].columns]
    return raw, sales.select(*columns["order_items"], *extra)


def write_family_range(
    family: str, days: list[date], write: Connect, state: RangeState, settings: FeatureSettings
) -> FamilyWritten:
    """Every date of a range for one family, its rows replaced in one transaction."""
    raw, sales = read_family_sources(state, family)
    if state.backfill is None:
        state.backfill = Backfill(raw, days, horizon_days=settings.horizon_days, sales=sales)
    batches = state.backfill.batches(settings.batch_rows)
    frames = read_ahead(  # each batch computed while the previous one is written
        feature_batches(
            family,
            raw,
            batches,
            window_days=settings.window_days,
            horizon_days=settings.horizon_days,
            sales=sales,
            shared=state.backfill,
        )
    )
    del raw, sales  # the frames hold what they need (see `feature_batches`)
    first = next(frames)  # builds the family's timeline, for every batch
    with write() as conn, one_thread(conn):  # the compute has the cores
        rows, schema = _replace(conn, family, days, itertools.chain([first], frames))
    return FamilyWritten(family, days, rows, schema, _preview(first), len(batches))


def _write_range(
    read: Connect,
    write: Connect,
    families: list[str],
    days: list[date],
    settings: FeatureSettings,
) -> Iterator[FamilyWritten]:
    """One family after the other in a background thread, yielded as each commits."""
    pool = _background_thread("feature-tables")
    state = RangeState(read, families)
    try:
        pending = [
            pool.submit(
                contextvars.copy_context().run,
                _write_unless_failed,
                *(family, days, write, state, settings),
            )
            for family in families
        ]
        for written in pending:
            yield written.result()
    finally:  # a failed family writes no further table
        pool.shutdown(wait=True, cancel_futures=True)


def _write_unless_failed(
    family: str, days: list[date], write: Connect, state: RangeState, settings: FeatureSettings
) -> FamilyWritten:
    """`write_family_range`, unless a family before it failed: the range stops there."""
    if state.failed:
        raise RuntimeError(f"{family}: not written, since a family before it failed")
    try:
        return write_family_range(family, days, write, state, settings)
    except BaseException:
        state.failed = True
        raise


def _background_thread(name: str) -> ThreadPoolExecutor:
    """One worker thread at a lower CPU priority (see `lower_thread_priority`)."""
    return ThreadPoolExecutor(
        max_workers=1, thread_name_prefix=name, initializer=lower_thread_priority
    )
