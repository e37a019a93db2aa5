"""Point-in-time-correct seller feature tables, all reference dates in one pass.

For a reference date D a table has one row per seller active at D (a sale in the
`horizon_days` before D) and only uses facts stamped strictly before D 00:00, so the rows
for D equal those computed from the as-of-D snapshot of the source. Each family is one
columnar pass over every requested date at once (DuckDB SQL plus a polars timeline; see
`engine`), and its columns and dtypes never depend on the data, so warehouse
partitions always line up.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date

import duckdb
import polars as pl

from olist_churn_dagster.lib.calendar import date_batches
from olist_churn_dagster.lib.features.engine import (
    FamilyPlan,
    FeatureSpec,
    Timeline,
    cte_list,
    declared_frames,
    evaluate_outputs,
    output_schema,
    read_timeline_sources,
    sale_runs,
    spine_ctes,
    to_date,
)
from olist_churn_dagster.lib.features.families import PLANS
from olist_churn_dagster.lib.features.families.products import TOP_CATEGORIES
from olist_churn_dagster.lib.ingest.schema import TABLES
from olist_churn_dagster.lib.sales import sale_items

__all__ = [
    "FEATURE_CATALOGUE",
    "FEATURE_FAMILIES",
    "ROW_ORDER",
    "TOP_CATEGORIES",
    "Backfill",
    "FeatureSpec",
    "active_seller_counts",
    "active_sellers",
    "columns_read",
    "compute_features",
    "feature_batches",
    "feature_columns",
    "feature_schema",
    "source_columns",
    "source_tables",
]

FEATURE_FAMILIES: tuple[str, ...] = tuple(PLANS)
_DEFAULT_WINDOW = 180
# DuckDB's memory for one family's computation (see `_connect`).
COMPUTE_MEMORY_LIMIT = "1GB"
# Its threads (None: DuckDB's default, one per core); a test pins them, since the memory
# a query needs grows with its threads.
COMPUTE_THREADS: int | None = None
_EPOCH = date(1970, 1, 1)
_SCHEMAS = {f: output_schema(PLANS[f](_DEFAULT_WINDOW).outputs) for f in FEATURE_FAMILIES}
FEATURE_CATALOGUE: tuple[FeatureSpec, ...] = tuple(
    o.spec for f in FEATURE_FAMILIES for o in PLANS[f](_DEFAULT_WINDOW).outputs
)
_ACTIVE_SCHEMA = {
    "reference_date": pl.Date(),
    "seller_id": pl.String(),
    "last_sale_date": pl.Date(),
    "recency_days": pl.Int64(),
}


def _check_family(family: str) -> None:
    if family not in PLANS:
        raise ValueError(f"unknown feature family {family!r}; expected one of {FEATURE_FAMILIES}")


def feature_columns(family: str) -> list[str]:
    """The family's feature columns in output order, without the keys."""
    _check_family(family)
    return list(_SCHEMAS[family])[2:]


def feature_schema(family: str) -> dict[str, pl.DataType]:
    """The family's full output schema: reference_date, seller_id, then the features."""
    _check_family(family)
    return dict(_SCHEMAS[family])


def _epoch_day(day: date) -> int:
    return (day - _EPOCH).days


def _day_range(dates: Sequence[date]) -> tuple[int, int]:
    """First and last reference day as epoch day numbers."""
    return _epoch_day(min(dates)), _epoch_day(max(dates))


def _connect(
    frames: Mapping[str, pl.DataFrame], dates: Sequence[date]
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the frames and the `dates` table (epoch days) registered.

    Its memory is capped (`COMPUTE_MEMORY_LIMIT`): left to its default (80% of the
    machine), DuckDB keeps the intermediate results of a family's history query in memory,
    growing with the orders; capped, it streams them and spills what does not fit
    to a temporary folder of its own, removed with the connection (the family's CTEs are
    staged as tables for that, see `engine.stage_ctes`). No query relies on insertion
    order (those whose order matters say ORDER BY), so DuckDB need not preserve it.
    """
    spill = tempfile.mkdtemp(prefix="olist-features-")
    config: dict[str, str | int | bool] = {
        "memory_limit": COMPUTE_MEMORY_LIMIT,
        "temp_directory": spill,
        "preserve_insertion_order": False,
    }
    if COMPUTE_THREADS is not None:
        config["threads"] = COMPUTE_THREADS
    con = duckdb.connect(":memory:", config=config)
    weakref.finalize(con, shutil.rmtree, spill, ignore_errors=True)
    days = sorted({_epoch_day(d) for d in dates})
    # As LazyFrames: DuckDB scans those without `pyarrow.dataset` (see `write_frame`).
    con.register("dates", pl.LazyFrame({"D": days}, schema={"D": pl.Int64}))
    for name, frame in frames.items():
        con.register(name, frame.lazy())
    return con


# The row order of every feature frame: by seller, then date. A seller's features change
# little from one day to the next, so in this order the warehouse's columns compress to
# well under half the size they take by date, in a third less time to write.
ROW_ORDER = ("seller_id", "reference_date")


def _in_row_order(df: pl.DataFrame) -> bool:
    """Whether rows are strictly increasing in `ROW_ORDER`."""
    seller, date_ = (pl.col(c) for c in ROW_ORDER)
    after_previous = (seller > seller.shift(1)) | (
        (seller == seller.shift(1)) & (date_ > date_.shift(1))
    )
    return bool(df.select(after_previous.fill_null(True).all()).item())


def _conform(result: pl.DataFrame, schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """Cast to the fixed schema, map any NaN to null, and make sure of the row order.

    The SQL already guards every division and emits rows in `ROW_ORDER`; the checks cost
    far less than the fixes, which only run if that ever stops being true.
    """
    floats = [c for c, t in schema.items() if t == pl.Float64]
    out = result.select([pl.col(c).cast(t) for c, t in schema.items()])
    if floats and out.select(pl.any_horizontal(pl.col(floats).is_nan().any())).item():
        out = out.with_columns(pl.col(floats).fill_nan(None))
    return out if _in_row_order(out) else out.sort(ROW_ORDER)


def active_sellers(
    orders: pl.DataFrame,
    order_items: pl.DataFrame,
    dates: Sequence[date],
    *,
    horizon_days: int = 45,
) -> pl.DataFrame:
    """Sellers with a sale in the `horizon_days` days before each date (the feature spine).

    Returns reference_date, seller_id, last_sale_date (the last sale day before D) and
    recency_days (D - last_sale_date, 1..horizon_days), sorted by seller and date.
    """
    if not dates:
        return pl.DataFrame(schema=_ACTIVE_SCHEMA)
    lo, hi = _day_range(dates)
    con = _connect({"sale_items": sale_items(orders, order_items)}, dates)
    try:
        sql = f"""WITH {cte_list(spine_ctes(horizon_days, lo, hi))}
SELECT {to_date("D")} AS reference_date, seller_id, {to_date("last_d")} AS last_sale_date,
       D - last_d AS recency_days
FROM spine ORDER BY seller_id, D"""
        return _conform(con.sql(sql).pl(), _ACTIVE_SCHEMA)
    finally:
        con.close()


def active_seller_counts(
    sales: pl.DataFrame, dates: Sequence[date], *, horizon_days: int = 45
) -> list[int]:
    """How many sellers are active at each of `dates` (the rows each feature table gets),
    from `sale_items`, without building the spine: sizes a backfill's batches.

    A sale day d with next sale day nd counts for D in [d + 1, least(nd, d + horizon)],
    as in the spine; the counts are the starts minus the ends up to each D.
    """
    runs = (
        sales.select("seller_id", "sale_date")
        .unique()
        .sort("seller_id", "sale_date")
        .select(
            start=pl.col("sale_date") + pl.duration(days=1),
            stop=pl.min_horizontal(
                pl.col("sale_date").shift(-1).over("seller_id"),
                pl.col("sale_date") + pl.duration(days=horizon_days),
            )
            + pl.duration(days=1),
        )
    )
    query = pl.Series(list(dates), dtype=pl.Date)
    started = runs.get_column("start").sort().search_sorted(query, side="right")
    stopped = runs.get_column("stop").sort().search_sorted(query, side="right")
    return (started - stopped).to_list()


def compute_features(
    family: str,
    raw: Mapping[str, pl.DataFrame],
    dates: Sequence[date],
    *,
    window_days: int = 180,
    horizon_days: int = 45,
    sales: pl.DataFrame | None = None,
    shared: Backfill | None = None,
) -> pl.DataFrame:
    """One feature family for every active seller at every date in `dates`.

    `raw` maps table names (as in `schema.TABLES`) to typed frames holding the newest
    state; only the tables the family needs are read. `sales` is `sale_items` of raw's
    orders and items, for a caller that computes several families from the same raw
    tables (computed here when not given); `shared`, what the families of one backfill
    share (see `Backfill`). The result has reference_date,
    seller_id and then `feature_columns(family)`, always with the same dtypes; ratios with
    a zero denominator are null (never NaN or inf).
    """
    batch = sorted(set(dates))
    (frame,) = feature_batches(
        family,
        raw,
        [batch],
        window_days=window_days,
        horizon_days=horizon_days,
        sales=sales,
        shared=shared,
    )
    return frame


def feature_batches(
    family: str,
    raw: Mapping[str, pl.DataFrame],
    batches: Sequence[Sequence[date]],
    *,
    window_days: int = 180,
    horizon_days: int = 45,
    sales: pl.DataFrame | None = None,
    shared: Backfill | None = None,
) -> Iterator[pl.DataFrame]:
    """`compute_features` over consecutive batches of dates, one frame per batch, lazily.

    The family's timeline is built once, from the raw history, for all the batches
    together (on the first frame asked for); each batch then only reads its own days from
    it, so the batches bound the rows held at once and not the cost. Each batch's
    dates must all come after the previous batch's; the frames equal what
    `compute_features` returns for each batch on its own. Once the timeline is built,
    the generator holds no reference to `raw` or `sales`. `shared` (see `Backfill`) is
    used when it was built for the same dates and horizon, and ignored otherwise.
    """
    _check_family(family)
    if window_days < 1 or horizon_days < 1:
        raise ValueError("window_days and horizon_days must be at least 1")
    batches = [sorted(set(b)) for b in batches]
    for previous, batch in itertools.pairwise([b for b in batches if b]):
        if batch[0] <= previous[-1]:
            raise ValueError(
                f"batches of reference dates must be in increasing order: {batch[0]} "
                f"comes after a batch ending {previous[-1]}"
            )
    plan = PLANS[family](window_days)
    missing = [t for t in source_tables(family) if t not in raw]
    if missing:
        raise ValueError(f"feature family {family!r} needs table(s) {missing}")
    return _frames(family, plan, raw, batches, window_days, horizon_days, sales, shared)


def _frames(
    family: str,
    plan: FamilyPlan,
    raw: Mapping[str, pl.DataFrame],
    batches: list[list[date]],
    window_days: int,
    horizon_days: int,
    sales: pl.DataFrame | None,
    shared: Backfill | None,
) -> Iterator[pl.DataFrame]:
    schema = _SCHEMAS[family]
    dates = [d for b in batches for d in b]
    if not dates:
        yield from (pl.DataFrame(schema=schema) for _ in batches)
        return
    sources, ids = _timeline_sources(plan, raw, sales, dates, window_days, horizon_days, shared)
    # The timeline holds all the batches need: this generator lets go of the raw tables
    # (the history query's DuckDB is closed with its buffers), so a caller that drops its
    # own references gets that memory back while the timeline is built and written.
    del raw, sales
    timeline = Timeline(plan, sources, window_days=window_days, horizon_days=horizon_days)
    con = duckdb.connect(":memory:")
    try:
        for batch in batches:
            if not batch:
                yield pl.DataFrame(schema=schema)
                continue
            values = timeline.values([_epoch_day(d) for d in batch])
            out = evaluate_outputs(con, plan, values)
            del values
            # Sellers are integer ranks up to here: strings only for the rows written.
            out = out.with_columns(seller_id=ids.gather(out.get_column("seller_id")))
            yield _conform(out, schema)
            del out
    finally:
        con.close()


def _timeline_sources(
    plan: FamilyPlan,
    raw: Mapping[str, pl.DataFrame],
    sales: pl.DataFrame | None,
    dates: list[date],
    window_days: int,
    horizon_days: int,
    shared: Backfill | None = None,
) -> tuple[list[pl.DataFrame | None], pl.Series]:
    """What the family's timeline over all `dates` reads from the raw history, with
    sellers as their integer ranks, and the seller ids to map the ranks back.

    The frames hold only the columns the plan declares (see `engine.declared_frames`).
    The sellers are ranked as `shared` ranks them when it fits and holds every seller of
    the frames (`Backfill.ranked`), and by their own ranks otherwise."""
    if sales is None:
        sales = sale_items(raw["orders"], raw["order_items"])
    frames = declared_frames(plan, raw, sales)
    lo, hi = _day_range(dates)
    runs = None
    if shared is not None and shared.fits(lo, hi, horizon_days):
        ranked = shared.ranked(frames)
        if ranked is not None:
            frames, ids, runs = ranked, shared.ids, shared.runs
    if runs is None:  # the family ranks its own sellers
        frames, ids = _integer_sellers(frames)
    con = _connect(frames, dates)
    try:
        sources = list(
            read_timeline_sources(
                con,
                plan,
                window_days=window_days,
                horizon_days=horizon_days,
                lo=lo,
                hi=hi,
                sale_runs=runs,
            )
        )
    finally:
        con.close()
    return sources, ids


class Backfill:
    """What every family of one backfill over `dates` computes the same way, computed once:
    the sellers' integer ranks, the spine's tables and sale runs (`engine.SaleRuns`), and
    how many sellers are active at each date (`active_counts`: the rows each family's
    table gets, which size its batches, see `batches`).

    The ranks are those of every seller of raw's order items (and of its sellers, when
    there), so they number any family's sellers in the same order as its own ranks
    would: the rows come out the same. A family whose tables hold a seller outside them,
    or a backfill over other days (see `fits`), computes its own instead.
    """

    def __init__(
        self,
        raw: Mapping[str, pl.DataFrame],
        dates: Sequence[date],
        *,
        horizon_days: int = 45,
        sales: pl.DataFrame | None = None,
    ) -> None:
        """From raw's order items (and sellers), their sales (`sale_items` of raw's orders
        and items, computed here when not given) and the dates."""
        if not dates:
            raise ValueError("a backfill needs at least one reference date")
        if sales is None:
            sales = sale_items(raw["orders"], raw["order_items"])
        tables = ("order_items", "sellers")
        self.ids = _seller_ids(raw[t].get_column("seller_id") for t in tables if t in raw)
        self._ranks = pl.Enum(self.ids)
        self.dates = sorted(set(dates))
        self.active_counts = active_seller_counts(sales, self.dates, horizon_days=horizon_days)
        lo, hi = _day_range(self.dates)
        sales = sales.select("seller_id", "order_purchase_timestamp")
        con = _connect(self.ranked({"sale_items": sales}), self.dates)
        try:
            self.runs = sale_runs(con, horizon_days=horizon_days, lo=lo, hi=hi)
        finally:
            con.close()

    def batches(self, max_rows: int) -> list[list[date]]:
        """The dates in consecutive batches of at most about `max_rows` rows of a feature
        table (`calendar.date_batches`, sized by the busiest date)."""
        return date_batches(self.dates, rows_per_date=max(self.active_counts), max_rows=max_rows)

    def fits(self, lo: int, hi: int, horizon_days: int) -> bool:
        """Whether its runs serve a family over reference days [lo, hi] with this
        horizon (its ranks serve any frames whose sellers they hold: see `ranked`)."""
        runs = self.runs
        return (runs.lo, runs.hi, runs.horizon_days) == (lo, hi, horizon_days)

    def ranked(self, frames: Mapping[str, pl.DataFrame]) -> dict[str, pl.DataFrame] | None:
        """The frames with seller_id as its integer rank (see `_integer_sellers`), or None
        when they hold a seller outside the ranks (its rank came out null: see `_ranked`)."""
        ranked = _ranked(frames, self._ranks)
        return ranked if _nulls(ranked) == _nulls(frames) else None


def _integer_sellers(
    frames: Mapping[str, pl.DataFrame],
) -> tuple[dict[str, pl.DataFrame], pl.Series]:
    """The frames with every seller_id replaced by its rank among all the sellers (a
    UInt32), and the sorted seller ids to map the ranks back.

    The family SQL then joins, groups and sorts sellers as integers instead of
    32-character strings, in the same order (ranks follow the strings' order).
    """
    with_sellers = (f for f in frames.values() if "seller_id" in f.columns)
    ids = _seller_ids(f.get_column("seller_id") for f in with_sellers)
    return _ranked(frames, pl.Enum(ids)), ids


def _seller_ids(columns: Iterable[pl.Series]) -> pl.Series:
    """The distinct seller ids of the columns, sorted: rank i is the i-th."""
    return pl.concat(list(columns)).unique().sort()


def _ranked(frames: Mapping[str, pl.DataFrame], ranks: pl.Enum) -> dict[str, pl.DataFrame]:
    """The frames with seller_id as its rank in `ranks`; a seller outside them gets a
    null rank (a cast that does not raise: the caller counts the nulls, `_nulls`)."""
    return {
        name: frame.with_columns(pl.col("seller_id").cast(ranks, strict=False).to_physical())
        if "seller_id" in frame.columns
        else frame
        for name, frame in frames.items()
    }


def _nulls(frames: Mapping[str, pl.DataFrame]) -> list[int]:
    """The null seller ids of each frame (cheap: polars keeps each column's null count)."""
    return [
        f.get_column("seller_id").null_count() for f in frames.values() if "seller_id" in f.columns
    ]


def source_tables(family: str) -> tuple[str, ...]:
    """The raw tables (schema names) a family reads: orders and order items always."""
    return tuple(source_columns(family))


# What `sale_items` reads of orders and items (so every family, for the spine at least).
_SALE_COLUMNS = {
    "orders": ("order_id", "order_status", "order_purchase_timestamp"),
    "order_items": ("order_id", "seller_id"),
}


def source_columns(family: str) -> dict[str, list[str]]:
    """The columns of each raw table the family reads (orders and order items always),
    in schema order: a caller can load only these, a fraction of the raw tables' memory.

    They are those its plan declares (`FamilyPlan.columns`) and those `sale_items` reads;
    the family's SQL sees no other (`engine.declared_frames`), so none it uses can be
    left out."""
    _check_family(family)
    declared = PLANS[family](_DEFAULT_WINDOW).columns
    out = {}
    for table in dict.fromkeys((*_SALE_COLUMNS, *declared)):
        keep = {*_SALE_COLUMNS.get(table, ()), *declared.get(table, ())}
        out[table] = [c for c in TABLES[table].columns if c in keep]
    return out


def columns_read(families: Iterable[str]) -> dict[str, list[str]]:
    """`source_columns` of several families together: each raw table any of them reads,
    with the columns any of them reads of it, in schema order."""
    wanted: dict[str, set[str]] = {}
    for family in families:
        for table, columns in source_columns(family).items():
            wanted.setdefault(table, set()).update(columns)
    return {t: [c for c in TABLES[t].columns if c in keep] for t, keep in wanted.items()}
