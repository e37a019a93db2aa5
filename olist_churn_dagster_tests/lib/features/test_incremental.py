"""The incremental daily path equals a full recomputation, cell for cell.

A source system moves on day by day; some days it also corrects its past (an old order
canceled, an old price fixed, an item moved to another seller, an old order deleted, an
old order arriving late). Each day's snapshot is loaded as its changes into a warehouse
that keeps the per-seller state, and that day's features are computed from the window and
the state. The raw tables must equal the snapshot loaded whole, and the features must
equal `compute_features` over the whole snapshot: exactly, floats included (the engine
sums integers, so no tolerance is needed).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from contextlib import closing
from datetime import date, datetime, timedelta
from functools import partial
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from olist_churn_dagster.lib.features import (
    FEATURE_FAMILIES,
    compute_features,
    incremental,
    source_columns,
)
from olist_churn_dagster.lib.features.writer import FamilyWritten, FeatureSettings, write_features
from olist_churn_dagster.lib.ingest.delta import TableChange, apply_load, plan_load
from olist_churn_dagster.lib.ingest.loader import load_dataset
from olist_churn_dagster.lib.ingest.schema import TABLES
from olist_churn_dagster.lib.ingest.snapshots import cut_as_of, write_snapshot
from olist_churn_dagster.lib.sales import sale_items
from olist_churn_dagster.lib.tables import feature_table
from olist_churn_dagster.lib.warehouse import open_warehouse, transaction

WINDOW, HORIZON = 180, 45
SETTINGS = FeatureSettings(WINDOW, HORIZON, batch_rows=1_500_000)
Tables = dict[str, pl.DataFrame]


def sorted_frame(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(frame.columns, nulls_last=True)


def assert_raw_equal(conn: duckdb.DuckDBPyConnection, expected: Tables) -> None:
    for name, spec in TABLES.items():
        stored = conn.execute(f'SELECT * FROM raw."{name}"').pl()
        want = expected.get(name, pl.DataFrame(schema=spec.schema))
        assert_frame_equal(sorted_frame(stored), sorted_frame(want), check_exact=True)


def load(conn: duckdb.DuckDBPyConnection, snapshot: Path, *, full: bool) -> dict:
    conn.execute("BEGIN TRANSACTION")
    try:
        changes = apply_load(conn, plan_load(conn, snapshot, full=full))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return changes


def incremental_features(conn: duckdb.DuckDBPyConnection, family: str, day: date) -> pl.DataFrame:
    conn.execute("BEGIN TRANSACTION")
    kwargs = {"window_days": WINDOW, "horizon_days": HORIZON}
    frame = incremental.features_on(conn, [family], day, **kwargs)[family]
    conn.execute("COMMIT")
    return frame


# --------------------------------------------------------------------------- corrections


def _purchase(tables: Tables) -> pl.DataFrame:
    """Sold, delivered orders with one item: (order_id, seller_id, purchase, price)."""
    single = tables["order_items"].group_by("order_id").len().filter(pl.col("len") == 1)
    return (
        tables["orders"]
        .filter(pl.col("order_status") == "delivered")
        .join(single.select("order_id"), on="order_id")
        .join(tables["order_items"], on="order_id")
        .select("order_id", "seller_id", "order_purchase_timestamp", "price")
        .sort("order_purchase_timestamp", "order_id")
    )


def _old(tables: Tables, before: date, index: int) -> dict:
    rows = _purchase(tables).filter(pl.col("order_purchase_timestamp") < before)
    return rows.row(index, named=True)


def cancel_and_reprice(tables: Tables, before: date) -> Tables:
    """An old order canceled, another old item's price corrected, a recent order's
    delivery date corrected and an old review's score changed."""
    canceled, repriced = _old(tables, before, 3), _old(tables, before, 11)
    orders = tables["orders"].with_columns(
        pl.when(pl.col("order_id") == canceled["order_id"])
        .then(pl.lit("canceled"))
        .otherwise(pl.col("order_status"))
        .alias("order_status")
    )
    items = tables["order_items"].with_columns(
        pl.when(pl.col("order_id") == repriced["order_id"])
        .then(pl.col("price") + 17.25)
        .otherwise(pl.col("price"))
        .alias("price")
    )
    reviews = tables["order_reviews"].with_columns(
        pl.when(pl.int_range(pl.len()) == 5)
        .then(1)
        .otherwise(pl.col("review_score"))
        .alias("review_score")
    )
    return tables | {"orders": orders, "order_items": items, "order_reviews": reviews}


def move_and_delete(tables: Tables, before: date) -> Tables:
    """An old item moved to another seller; a seller's first order ever deleted, with its
    items, payments and reviews."""
    moved = _old(tables, before, 20)
    other = tables["sellers"].filter(pl.col("seller_id") != moved["seller_id"])["seller_id"][0]
    first = _purchase(tables).group_by("seller_id").first().sort("order_purchase_timestamp")
    gone = first.filter(pl.col("order_id") != moved["order_id"]).row(0, named=True)["order_id"]
    items = tables["order_items"].with_columns(
        pl.when(pl.col("order_id") == moved["order_id"])
        .then(pl.lit(other))
        .otherwise(pl.col("seller_id"))
        .alias("seller_id")
    )
    keep = pl.col("order_id") != gone
    return tables | {
        "orders": tables["orders"].filter(keep),
        "order_items": items.filter(keep),
        "order_payments": tables["order_payments"].filter(keep),
        "order_reviews": tables["order_reviews"].filter(keep),
    }


def late_historic_order(tables: Tables, before: date) -> Tables:
    """An order purchased long ago that arrives only now, for an existing seller and a new
    seller whose first sale it is (with its customer, payment and review)."""
    template = _old(tables, before, 7)
    when = datetime.combine(before - timedelta(days=40), datetime.min.time())
    order_id, customer_id, seller_id = (
        "late" + "0" * 28,
        "latecust" + "0" * 24,
        "newseller" + "0" * 23,
    )
    order = (
        tables["orders"]
        .filter(pl.col("order_id") == template["order_id"])
        .with_columns(
            pl.lit(order_id).alias("order_id"),
            pl.lit(customer_id).alias("customer_id"),
            pl.lit(when).alias("order_purchase_timestamp"),
            pl.lit(when + timedelta(hours=2)).alias("order_approved_at"),
            pl.lit(when + timedelta(days=2)).alias("order_delivered_carrier_date"),
            pl.lit(when + timedelta(days=6)).alias("order_delivered_customer_date"),
            pl.lit(when + timedelta(days=20)).alias("order_estimated_delivery_date"),
        )
    )
    item = tables["order_items"].filter(pl.col("order_id") == template["order_id"])
    items = pl.concat(
        [
            item.with_columns(pl.lit(order_id).alias("order_id")),
            item.with_columns(
                pl.lit(order_id).alias("order_id"),
                pl.lit(2, dtype=pl.Int64).alias("order_item_id"),
                pl.lit(seller_id).alias("seller_id"),
            ),
        ]
    )
    customer = tables["customers"].head(1).with_columns(pl.lit(customer_id).alias("customer_id"))
    seller = tables["sellers"].head(1).with_columns(pl.lit(seller_id).alias("seller_id"))
    payment = tables["order_payments"].head(1).with_columns(pl.lit(order_id).alias("order_id"))
    review = (
        tables["order_reviews"]
        .head(1)
        .with_columns(
            pl.lit(order_id).alias("order_id"),
            pl.lit(when + timedelta(days=7)).alias("review_creation_date"),
            pl.lit(when + timedelta(days=8)).alias("review_answer_timestamp"),
        )
    )
    return tables | {
        "orders": pl.concat([tables["orders"], order]),
        "order_items": pl.concat([tables["order_items"], items]),
        "customers": pl.concat([tables["customers"], customer]),
        "sellers": pl.concat([tables["sellers"], seller]),
        "order_payments": pl.concat([tables["order_payments"], payment]),
        "order_reviews": pl.concat([tables["order_reviews"], review]),
    }


# --------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def source_tables_full(demo_raw_dir: Path) -> Tables:
    return load_dataset(demo_raw_dir)


@pytest.mark.slow
def test_daily_snapshots_with_corrections_equal_a_full_recomputation(
    source_tables_full: Tables, tmp_path: Path
) -> None:
    source = dict(source_tables_full)
    last = source["orders"]["order_purchase_timestamp"].max().date() + timedelta(days=1)
    # (snapshot date, correction of the source system's past on that day)
    Correction = Callable[[Tables, date], Tables] | None
    days: list[tuple[date, Correction]] = [
        (last - timedelta(days=30), None),
        (last - timedelta(days=29), None),
        (last - timedelta(days=20), cancel_and_reprice),
        (last - timedelta(days=19), move_and_delete),
        (last - timedelta(days=3), late_historic_order),
        (last, None),
    ]
    conn = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    seen: list[dict[str, TableChange]] = []
    try:
        for step, (day, correct) in enumerate(days):
            if correct is not None:
                # corrections reach back before the state's cutoff of the previous date
                source = correct(source, day - timedelta(days=WINDOW + 30))
            snapshot = write_snapshot(cut_as_of(source, day), tmp_path / "snapshots", day)
            changes = load(conn, snapshot, full=step == 0)
            seen.append(changes)
            whole = load_dataset(snapshot)
            assert_raw_equal(conn, whole)
            for family in FEATURE_FAMILIES:
                got = incremental_features(conn, family, day)
                want = compute_features(
                    family, whole, [day], window_days=WINDOW, horizon_days=HORIZON
                )
                assert got.height > 0
                assert_frame_equal(got, want, check_exact=True)
            cutoff = incremental.epoch_day(day) - incremental.reach_days(WINDOW, HORIZON)
            assert incremental.state_cutoff(conn) == cutoff
    finally:
        conn.close()

    assert all(c.mode == "full" for c in seen[0].values())
    assert all(c.mode == "delta" for t, c in seen[1].items() if TABLES[t].primary_key)
    assert seen[1]["orders"].inserted > 0 and seen[1]["orders"].deleted == 0
    assert seen[2]["orders"].updated >= 1 and seen[2]["order_items"].updated >= 1
    assert seen[2]["order_reviews"].updated >= 1
    assert seen[3]["orders"].deleted == 1 and seen[3]["order_items"].updated >= 1
    assert seen[4]["sellers"].inserted == 1 and seen[4]["order_items"].inserted >= 2


def _scratch(tables: Tables, cutoff: int) -> pl.DataFrame:
    """The state over every sale purchased before `cutoff`, built from the frames."""
    before = datetime.combine(date(1970, 1, 1) + timedelta(days=cutoff), datetime.min.time())
    orders = tables["orders"].filter(pl.col("order_purchase_timestamp") < before)
    return incremental.summarize(
        orders, tables["order_items"], window_days=WINDOW, horizon_days=HORIZON
    )


def test_the_state_moved_forward_or_repaired_equals_one_built_from_scratch(
    source_tables_full: Tables, tmp_path: Path
) -> None:
    tables = source_tables_full
    last = tables["orders"]["order_purchase_timestamp"].max().date()
    snapshot = write_snapshot(cut_as_of(tables, last), tmp_path / "snapshots", last)
    conn = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    try:
        load(conn, snapshot, full=True)
        whole = load_dataset(snapshot)
        first = incremental.epoch_day(last) - 300
        kwargs = {"window_days": WINDOW, "horizon_days": HORIZON}
        built = incremental.state_at(conn, first, **kwargs)
        assert incremental.state_cutoff(conn) == first
        assert_frame_equal(built, _scratch(whole, first), check_exact=True)
        moved = incremental.state_at(conn, first + 45, **kwargs)
        assert incremental.state_cutoff(conn) == first + 45
        assert_frame_equal(moved, _scratch(whole, first + 45), check_exact=True)
        assert not moved.equals(built)
        earlier = incremental.state_at(conn, first - 10, **kwargs)  # not stored
        assert_frame_equal(earlier, _scratch(whole, first - 10), check_exact=True)
        assert incremental.state_cutoff(conn) == first + 45

        # A correction of an old price, written behind the state's back, then repaired.
        item = conn.execute(
            "SELECT order_id, order_item_id, seller_id FROM raw.order_items JOIN raw.orders "
            "USING (order_id) WHERE order_status = 'delivered' ORDER BY order_purchase_timestamp "
            "LIMIT 1"
        ).fetchone()
        conn.execute(
            "UPDATE raw.order_items SET price = price + 100 "
            "WHERE order_id = ? AND order_item_id = ?",
            [item[0], item[1]],
        )
        fixed = stored_frames(conn)
        stale = incremental.read_state(conn, WINDOW)
        assert not stale.equals(_scratch(fixed, first + 45))
        seller = pl.DataFrame({"seller_id": [item[2]]})
        assert incremental.repair(conn, seller, **kwargs) == 1
        repaired = incremental.read_state(conn, WINDOW)
        assert_frame_equal(repaired, _scratch(fixed, first + 45), check_exact=True)
    finally:
        conn.close()


def stored_frames(conn: duckdb.DuckDBPyConnection) -> Tables:
    return {name: conn.execute(f'SELECT * FROM raw."{name}"').pl() for name in TABLES}


def raw_in_memory(tables: Tables) -> duckdb.DuckDBPyConnection:
    """An in-memory warehouse whose raw schema holds `tables`."""
    conn = duckdb.connect(":memory:")
    conn.execute("CREATE SCHEMA raw")
    for name, frame in tables.items():
        conn.register("_frame", frame)
        conn.execute(f'CREATE TABLE raw."{name}" AS SELECT * FROM _frame')
        conn.unregister("_frame")
    return conn


def test_one_date_from_its_window_and_the_state_equals_the_engine(
    source_tables_full: Tables,
) -> None:
    """The single-date evaluation (`features_on`: `point_sql` over the window's
    rows plus the state) gives the engine's rows over all history, on dates far apart."""
    tables = source_tables_full
    conn = raw_in_memory(tables)
    try:
        last = tables["orders"]["order_purchase_timestamp"].max().date() + timedelta(days=1)
        for day in (last - timedelta(days=150), last):
            for family in FEATURE_FAMILIES:
                got = incremental_features(conn, family, day)
                want = compute_features(
                    family, tables, [day], window_days=WINDOW, horizon_days=HORIZON
                )
                assert got.height > 0
                assert_frame_equal(got, want, check_exact=True)
        # the SQL twin of lib.sales.sale_items, used by the views over the warehouse
        conn.register("orders", tables["orders"])
        conn.register("order_items", tables["order_items"])
        in_sql = conn.execute(incremental.SALE_ITEMS_SQL).pl()
        in_polars = sale_items(tables["orders"], tables["order_items"])
        assert_frame_equal(sorted_frame(in_sql), sorted_frame(in_polars), check_exact=True)
    finally:
        conn.close()


# --------------------------------------------------------------------------- ownership


class _Recorded:
    """A DuckDB connection that records the SQL run through `execute`. The frames the
    caller's SQL reads by replacement scan (its local variables) are registered first:
    DuckDB looks for them in the frame that calls it, which is this one."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn, self.statements = conn, []

    def execute(self, sql: str, *args: object) -> duckdb.DuckDBPyConnection:
        self.statements.append(sql)
        for name, value in sys._getframe(1).f_locals.items():
            if name.startswith("_") and name in sql and hasattr(value, "schema"):
                self.conn.register(name, value)
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


def test_the_families_of_one_date_read_its_raw_rows_once(source_tables_full: Tables) -> None:
    """Every family of a date reads the reach's rows from the temporary tables made once
    for them all: each window table is read from the raw schema in one statement, and no
    family's SQL reads the raw schema (the state aside, which reads before the reach)."""
    tables = source_tables_full
    conn = raw_in_memory(tables)
    try:
        day = tables["orders"]["order_purchase_timestamp"].max().date() + timedelta(days=1)
        recorded = _Recorded(conn)
        kwargs = {"window_days": WINDOW, "horizon_days": HORIZON}
        conn.execute("BEGIN TRANSACTION")
        frames = incremental.features_on(recorded, list(FEATURE_FAMILIES), day, **kwargs)
        conn.execute("COMMIT")
        assert all(frames[family].height > 0 for family in FEATURE_FAMILIES)
        window = [
            sql for sql in recorded.statements if sql.startswith("CREATE OR REPLACE TEMP TABLE")
        ]
        created = sorted(sql.split()[5] for sql in window)
        read: dict[str, set[str]] = {}
        for family in FEATURE_FAMILIES:
            for table, columns in source_columns(family).items():
                read.setdefault(table, set()).update(columns)
        assert created == sorted([*read, "sale_items"])
        joined = {"order_id", "customer_id", "product_id"}  # the window queries' join keys
        for table, columns in read.items():  # each raw table scanned by one statement, once
            assert sum(len(re.findall(rf"raw\.{table}\b", sql)) for sql in window) == 1, table
            (sql,) = [sql for sql in window if sql.split()[5] == table]
            selected = re.search(rf"AS SELECT (.*?) FROM raw\.{table}\b", sql)
            kept = {c.strip().strip('"') for c in selected.group(1).split(",")}
            assert columns <= kept <= columns | joined, table  # only the columns read
        assert any(len(read[t]) < len(TABLES[t].columns) for t in read)  # some left out
        family_sql = [sql for sql in recorded.statements if sql.startswith("WITH ")]
        assert len(family_sql) == len(FEATURE_FAMILIES)
        assert not [sql for sql in family_sql if "raw." in sql]
    finally:
        conn.close()


def _load_file(path: Path, snapshot: Path, *, full: bool) -> None:
    with transaction(path) as conn:
        apply_load(conn, plan_load(conn, snapshot, full=full))


def _read(path: Path, sql: str) -> pl.DataFrame:
    with closing(open_warehouse(path, read_only=True)) as conn:
        frame = conn.execute(sql).pl()
    return frame.sort(frame.columns, nulls_last=True)


def _stored_state(path: Path) -> tuple[pl.DataFrame, int | None]:
    with closing(open_warehouse(path, read_only=True)) as conn:
        state = conn.execute(f"SELECT * FROM {incremental.LIFETIME_TABLE}").pl()
        return state.sort("seller_id"), incremental.state_cutoff(conn)


@pytest.mark.slow
def test_the_feature_run_repairs_the_state_from_the_raw_loads_since_the_last_one(
    source_tables_full: Tables, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two snapshots correct the past before the state's cutoff (an item moved to another
    seller and an order deleted; then an order canceled and a price fixed). The raw loads
    write no state, only their log; a feature run that fails leaves the log; the next one
    repairs the state from both loads, says so, and its rows equal a full computation."""
    path = tmp_path / "warehouse.duckdb"
    write = partial(transaction, path)

    def read() -> closing[duckdb.DuckDBPyConnection]:
        return closing(open_warehouse(path))

    def run(families: list[str], day: date) -> list[FamilyWritten]:
        return list(write_features(read, write, families, [day], SETTINGS))

    def snapshot(tables: Tables, day: date) -> Path:
        return write_snapshot(cut_as_of(tables, day), tmp_path / "snapshots", day)

    source = dict(source_tables_full)
    day = source["orders"]["order_purchase_timestamp"].max().date() - timedelta(days=10)
    _load_file(path, snapshot(source, day), full=True)
    (built,) = run(["sales"], day)
    assert built.lifetime_state is not None and built.lifetime_state.startswith("reset")
    state, cutoff = _stored_state(path)
    assert cutoff == incremental.epoch_day(day) - incremental.reach_days(WINDOW, HORIZON)

    for correct in (move_and_delete, cancel_and_reprice):
        day += timedelta(days=1)
        source = correct(source, day - timedelta(days=WINDOW + 30))
        _load_file(path, snapshot(source, day), full=False)
    stale, stale_cutoff = _stored_state(path)
    assert_frame_equal(stale, state, check_exact=True)  # the raw loads wrote no state
    assert stale_cutoff == cutoff
    log = _read(path, f"SELECT * FROM {incremental.CHANGES_TABLE}")
    assert log.height > 0 and log.get_column("seller_id").null_count() == 0
    whole = load_dataset(snapshot(source, day))
    assert not stale.equals(_scratch(whole, cutoff))  # the corrections reach the state

    def killed(*args: object, **kwargs: object) -> pl.DataFrame:
        raise RuntimeError("killed")

    with monkeypatch.context() as patched:
        patched.setattr(incremental, "features_on", killed)
        with pytest.raises(RuntimeError, match="killed"):
            run(["sales"], day)
    assert_frame_equal(_read(path, f"SELECT * FROM {incremental.CHANGES_TABLE}"), log)
    assert_frame_equal(_stored_state(path)[0], state, check_exact=True)

    written = {w.family: w for w in run(list(FEATURE_FAMILIES), day)}
    assert written["sales"].lifetime_state.startswith("repaired")
    assert all(w.lifetime_state is None for f, w in written.items() if f != "sales")
    assert _read(path, f"SELECT * FROM {incremental.CHANGES_TABLE}").is_empty()
    repaired, moved_to = _stored_state(path)
    assert_frame_equal(repaired, _scratch(whole, moved_to), check_exact=True)
    for family in FEATURE_FAMILIES:
        stored = _read(
            path, f"SELECT * FROM {feature_table(family)} WHERE reference_date = '{day}'"
        )
        want = compute_features(family, whole, [day], window_days=WINDOW, horizon_days=HORIZON)
        assert_frame_equal(stored.select(want.columns), sorted_frame(want), check_exact=True)
