"""Loading a snapshot as its changes: same tables as a whole load, counts of what changed,
and the same refusals of bad input (nothing written)."""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from olist_churn_dagster.lib.ingest.delta import (
    HASH_SCHEMA,
    SALE_CHANGES,
    TableChange,
    _TablePlan,
    _write_delta,
    apply_load,
    last_changes,
    loaded_fingerprint,
    plan_load,
)
from olist_churn_dagster.lib.ingest.loader import HASH, LINE, ROW, InputDataError, load_dataset
from olist_churn_dagster.lib.ingest.schema import TABLES
from olist_churn_dagster.lib.ingest.snapshots import cut_as_of, inspect_snapshot, write_snapshot
from olist_churn_dagster.lib.warehouse import write_frame
from olist_churn_dagster_tests.memory import assert_flat, resident_bytes

Tables = dict[str, pl.DataFrame]


@pytest.fixture(scope="module")
def tables(demo_raw_dir: Path) -> Tables:
    return load_dataset(demo_raw_dir)


@pytest.fixture(scope="module")
def first_load(
    tables: Tables, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, date, dict[str, TableChange]]:
    """A warehouse file holding a snapshot 10 days before the data's end, loaded whole
    once for the module, with the data's last day and the load's changes."""
    folder = tmp_path_factory.mktemp("first-load")
    last = tables["orders"]["order_purchase_timestamp"].max().date()
    day = last - timedelta(days=10)
    with duckdb.connect(str(folder / "w.duckdb")) as conn:
        changes = load(conn, write_snapshot(cut_as_of(tables, day), folder / "snap", day))
    return folder / "w.duckdb", last, changes


@pytest.fixture()
def loaded(first_load: tuple[Path, date, dict[str, TableChange]], tmp_path: Path):
    """The test's own copy of the first load's warehouse, open."""
    template, last, changes = first_load
    conn = duckdb.connect(str(shutil.copy(template, tmp_path / "w.duckdb")))
    yield conn, last, changes
    conn.close()


def load(conn: duckdb.DuckDBPyConnection, snapshot: Path, *, full: bool = False) -> dict:
    conn.execute("BEGIN TRANSACTION")
    try:
        changes = apply_load(conn, plan_load(conn, snapshot, full=full))
        conn.execute("COMMIT")
        return changes
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def next_day_snapshot(tables: Tables, last: date, folder: Path) -> Path:
    """The snapshot of the day after the data's end, cut from the generated tables."""
    day = last + timedelta(days=1)
    return write_snapshot(cut_as_of(tables, day), folder / "snap", day)


def stored(conn: duckdb.DuckDBPyConnection) -> Tables:
    return {name: conn.execute(f'SELECT * FROM raw."{name}"').pl() for name in TABLES}


def assert_same_rows(got: Tables, want: Tables) -> None:
    for name, spec in TABLES.items():
        expected = want.get(name, pl.DataFrame(schema=spec.schema))
        cols = list(spec.columns)
        assert_frame_equal(
            got[name].sort(cols, nulls_last=True), expected.sort(cols, nulls_last=True)
        )


def test_first_load_is_whole_and_stores_hashes(loaded) -> None:
    conn, _, changes = loaded
    assert {c.mode for c in changes.values()} == {"full"}
    keyed = [name for name, spec in TABLES.items() if spec.primary_key]
    for name in keyed:
        count = conn.execute(f'SELECT count(*) FROM {HASH_SCHEMA}."{name}"').fetchone()[0]
        assert count == changes[name].rows


def test_the_loaded_fingerprint_is_the_snapshots(tables: Tables, tmp_path: Path) -> None:
    """What a training run records of its data: the fingerprint of the files last loaded,
    the very fingerprint of the snapshot they came from; none before any load."""
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    assert loaded_fingerprint(conn) is None
    last = tables["orders"]["order_purchase_timestamp"].max().date()
    fingerprints = []
    for day in (last - timedelta(days=5), last):
        folder = write_snapshot(cut_as_of(tables, day), tmp_path / "snap", day)
        load(conn, folder)
        fingerprints.append(inspect_snapshot(tmp_path / "snap", folder.name).fingerprint)
        assert loaded_fingerprint(conn) == fingerprints[-1]
    assert fingerprints[0] != fingerprints[1]
    conn.close()


def test_each_load_logs_the_sellers_whose_sales_changed(
    loaded, tables: Tables, tmp_path: Path
) -> None:
    """What the feature run catches its lifetime state up from: a whole load logs every
    seller (a row with no seller); a load of changes, the sellers of each changed order as
    before and after it (an item moved to another seller logs both) with their earliest
    such purchase; a load that changes nothing, nothing. Loads append until read."""
    conn, last, _ = loaded
    log = f'{HASH_SCHEMA}."{SALE_CHANGES}"'
    assert conn.execute(f"SELECT * FROM {log}").fetchall() == [(None, None)]
    conn.execute(f"DELETE FROM {log}")  # read, as a feature run does
    oldest = conn.execute(
        "SELECT order_id, order_item_id, seller_id, order_purchase_timestamp "
        "FROM raw.order_items JOIN raw.orders USING (order_id) "
        "ORDER BY order_purchase_timestamp, order_id, order_item_id LIMIT 1"
    ).fetchone()
    order_id, item_id, seller, purchased = oldest
    other = tables["sellers"].filter(pl.col("seller_id") != seller)["seller_id"][0]
    day = last + timedelta(days=1)
    cut = cut_as_of(tables, day)
    moved = (pl.col("order_id") == order_id) & (pl.col("order_item_id") == item_id)
    cut["order_items"] = cut["order_items"].with_columns(
        pl.when(moved).then(pl.lit(other)).otherwise(pl.col("seller_id")).alias("seller_id")
    )
    snapshot = write_snapshot(cut, tmp_path / "snap", day)

    load(conn, snapshot)
    logged = conn.execute(f"SELECT * FROM {log}").pl()
    assert logged.get_column("seller_id").null_count() == 0
    assert logged.get_column("seller_id").is_unique().all()
    first = dict(logged.iter_rows())
    assert first[seller] == first[other] == purchased
    load(conn, snapshot)  # no change: nothing logged
    assert_frame_equal(conn.execute(f"SELECT * FROM {log}").pl(), logged)
    load(conn, snapshot, full=True)
    after = conn.execute(f"SELECT * FROM {log}").pl()
    assert_frame_equal(after.head(logged.height), logged)
    assert after.tail(1).rows() == [(None, None)]


def test_a_later_snapshot_with_corrections_loads_as_its_changes(
    loaded, tables: Tables, tmp_path: Path
) -> None:
    conn, last, _ = loaded
    before = stored(conn)
    day = last + timedelta(days=1)
    cut = cut_as_of(tables, day)
    old = before["orders"].sort("order_purchase_timestamp")["order_id"]
    changed, deleted = old[5], old[6]
    cut["orders"] = cut["orders"].with_columns(
        pl.when(pl.col("order_id") == changed)
        .then(pl.lit("unavailable"))
        .otherwise(pl.col("order_status"))
        .alias("order_status")
    )
    for name in ("orders", "order_items", "order_payments", "order_reviews"):
        cut[name] = cut[name].filter(pl.col("order_id") != deleted)
    snapshot = write_snapshot(cut, tmp_path / "snap", day)

    changes = load(conn, snapshot)

    assert_same_rows(stored(conn), load_dataset(snapshot))
    orders = changes["orders"]
    assert orders.mode == "delta"
    assert orders.deleted == 1 and orders.updated >= 1 and orders.inserted > 0
    assert orders.inserted + orders.updated < orders.rows / 5  # only the changes were typed
    for name, change in changes.items():
        if change.mode == "delta":
            assert change.inserted - change.deleted == change.rows - before[name].height, name
    assert changes["products"].inserted == changes["products"].updated == 0
    # the same snapshot again: nothing changes
    again = load(conn, snapshot)
    assert all(
        c.inserted == c.updated == c.deleted == 0 for c in again.values() if c.mode == "delta"
    )


def test_a_delta_refuses_bad_input_and_writes_nothing(
    loaded, tables: Tables, tmp_path: Path
) -> None:
    conn, last, _ = loaded
    before = stored(conn)
    day = last + timedelta(days=1)
    cut = cut_as_of(tables, day)
    # An order deleted while one of its (unchanged) items stays: an orphan item.
    orphaned = cut["order_items"]["order_id"][3]
    first = cut["order_items"].with_row_index().filter(pl.col("order_id") == orphaned)["index"][0]
    cut["orders"] = cut["orders"].filter(pl.col("order_id") != orphaned)
    snapshot = write_snapshot(cut, tmp_path / "snap", day)
    with pytest.raises(InputDataError) as error:
        load(conn, snapshot)
    message = str(error.value)
    assert (
        TABLES["order_items"].file_name in message
        and f"row {first + 1} (line {first + 2})" in message
    )
    assert f"point at orders unknown to {TABLES['orders'].file_name}" in message
    assert_same_rows(stored(conn), before)

    # A new row repeating the key of an unchanged one.
    cut = cut_as_of(tables, day)
    sellers = cut["sellers"]
    cut["sellers"] = pl.concat(
        [sellers, sellers.head(1).with_columns(pl.lit("XX").alias("seller_state"))]
    )
    snapshot = write_snapshot(cut, tmp_path / "snap", day)
    with pytest.raises(InputDataError) as error:
        load(conn, snapshot)
    message = str(error.value)
    assert TABLES["sellers"].file_name in message
    assert f"duplicate primary key (seller_id) = ('{sellers['seller_id'][0]}',)" in message
    assert f"on rows 1, {sellers.height + 1};" in message
    assert_same_rows(stored(conn), before)

    # An unchanged row written twice, word for word: both copies match the stored row.
    cut = cut_as_of(tables, day)
    cut["sellers"] = pl.concat([sellers, sellers.slice(2, 1)])
    snapshot = write_snapshot(cut, tmp_path / "snap", day)
    with pytest.raises(InputDataError, match=f"on rows 3, {sellers.height + 1};"):
        load(conn, snapshot)
    assert_same_rows(stored(conn), before)


def test_a_changed_schema_or_full_reload_loads_whole(
    loaded, tables: Tables, tmp_path: Path
) -> None:
    conn, last, _ = loaded
    snapshot = next_day_snapshot(tables, last, tmp_path)
    conn.execute(f'DROP TABLE {HASH_SCHEMA}."products"')
    changes = load(conn, snapshot)
    assert changes["products"].mode == "full" and changes["orders"].mode == "delta"
    assert_same_rows(stored(conn), load_dataset(snapshot))
    assert {c.mode for c in load(conn, snapshot, full=True).values()} == {"full"}


def _same_size_edit(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert len(old) == len(new) and data.count(old) >= 1
    path.write_bytes(data.replace(old, new, 1))


def test_an_unchanged_file_is_skipped_and_a_changed_one_of_the_same_size_is_loaded(
    loaded, tables: Tables, tmp_path: Path
) -> None:
    conn, last, _ = loaded
    snapshot = next_day_snapshot(tables, last, tmp_path)
    changes = load(conn, snapshot)
    # products, sellers, ... are cut whole: the same bytes as the first load's files
    skipped = {name for name, change in changes.items() if change.unchanged_file}
    assert {"products", "sellers", "category_translation"} <= skipped
    assert "orders" not in skipped and "order_items" not in skipped
    assert changes["products"].rows == tables["products"].height
    assert changes["products"].inserted == changes["products"].updated == 0
    assert_same_rows(stored(conn), load_dataset(snapshot))
    assert all(c.unchanged_file for c in load(conn, snapshot).values())

    # one product's weight edited in place: same size, other bytes, so read and applied
    products = snapshot / TABLES["products"].file_name
    product = tables["products"].filter(pl.col("product_weight_g") >= 100).row(0, named=True)
    weight = str(product["product_weight_g"])
    edited = str(int(weight[0]) % 9 + 1) + weight[1:]
    line = next(
        row
        for row in products.read_bytes().split(b"\n")
        if row.startswith(product["product_id"].encode())
    )
    _same_size_edit(products, line, line.replace(weight.encode(), edited.encode(), 1))
    changes = load(conn, snapshot)
    assert not changes["products"].unchanged_file and changes["products"].updated == 1
    assert_same_rows(stored(conn), load_dataset(snapshot))
    assert changes["orders"].unchanged_file  # the other files are still skipped
    # a full reload reads every file whatever its bytes
    assert not any(c.unchanged_file for c in load(conn, snapshot, full=True).values())


def test_a_corrupt_file_is_refused_even_of_the_same_size(
    loaded, tables: Tables, tmp_path: Path
) -> None:
    conn, last, _ = loaded
    before = stored(conn)
    snapshot = next_day_snapshot(tables, last, tmp_path)
    products = snapshot / TABLES["products"].file_name
    weight = str(tables["products"]["product_weight_g"].drop_nulls()[0])
    header, first, rest = products.read_bytes().split(b"\n", 2)
    bad = first.replace(f",{weight},".encode(), b"," + b"x" * len(weight) + b",", 1)
    assert bad != first and len(bad) == len(first)
    products.write_bytes(b"\n".join([header, bad, rest]))
    for _ in range(2):  # refused, and refused again: nothing of it was recorded
        with pytest.raises(InputDataError, match="product_weight_g"):
            load(conn, snapshot)
        assert_same_rows(stored(conn), before)


def test_a_load_keeps_the_keys_it_changed_for_the_checks(
    loaded, tables: Tables, tmp_path: Path
) -> None:
    conn, last, _ = loaded
    assert last_changes(conn, "orders") is None  # loaded whole: check every row
    changes = load(conn, next_day_snapshot(tables, last, tmp_path))
    changed, deleted = last_changes(conn, "orders")
    count = conn.execute(f"SELECT count(*) FROM {changed}").fetchone()[0]
    assert count == changes["orders"].inserted + changes["orders"].updated > 0
    assert conn.execute(f"SELECT count(*) FROM {deleted}").fetchone()[0] == 0
    assert last_changes(conn, "geolocation") is None  # no key
    load(conn, next_day_snapshot(tables, last, tmp_path), full=True)
    assert last_changes(conn, "orders") is None


def test_only_the_new_lines_of_a_changed_file_are_parsed(
    loaded, tables: Tables, tmp_path: Path
) -> None:
    conn, last, _ = loaded
    snapshot = next_day_snapshot(tables, last, tmp_path)
    conn.execute("BEGIN TRANSACTION")
    plan = plan_load(conn, snapshot, full=False)
    conn.execute("ROLLBACK")
    orders = plan.tables["orders"]
    assert orders.known is not None  # read by lines
    assert orders.known.height + orders.typed.height >= orders.rows - orders.updated.height
    assert orders.keys.height < orders.rows / 5  # only the new lines were parsed
    changes = load(conn, snapshot)
    assert_same_rows(stored(conn), load_dataset(snapshot))
    assert changes["orders"].rows == load_dataset(snapshot)["orders"].height


def test_a_quoted_line_break_stays_inside_its_record(
    loaded, tables: Tables, tmp_path: Path
) -> None:
    """A review comment holding a line break is one record: the file is still read by
    records (only the new ones parsed), with the hash a whole read gives that record."""
    conn, last, _ = loaded
    day = last + timedelta(days=1)
    cut = cut_as_of(tables, day)
    first = cut["order_reviews"]["review_id"][0]
    cut["order_reviews"] = cut["order_reviews"].with_columns(
        pl.when(pl.col("review_id") == first)
        .then(pl.lit("two\nlines, quoted"))
        .otherwise(pl.col("review_comment_message"))
        .alias("review_comment_message")
    )
    snapshot = write_snapshot(cut, tmp_path / "snap", day)
    conn.execute("BEGIN TRANSACTION")
    plan = plan_load(conn, snapshot, full=False).tables["order_reviews"]
    conn.execute("ROLLBACK")
    assert plan.known is not None and plan.keys.height < plan.rows / 5  # read by records
    assert first in plan.updated["review_id"].to_list()
    line = 1 + next(
        n
        for n, text in enumerate((snapshot / TABLES["order_reviews"].file_name).open())
        if text.startswith(first)
    )
    assert plan.keys.filter(pl.col("review_id") == first)["__line"].to_list() == [line]
    changes = load(conn, snapshot)
    assert changes["order_reviews"].updated + changes["order_reviews"].inserted >= 1
    assert_same_rows(stored(conn), load_dataset(snapshot))
    # loaded again: the record spanning two lines is known by its whole bytes
    again = load(conn, snapshot)
    assert all(c.inserted == c.updated == c.deleted == 0 for c in again.values())
    # a later day keeps it and finds every other change
    later = last + timedelta(days=2)
    cut = cut_as_of(tables, later)
    cut["order_reviews"] = cut["order_reviews"].with_columns(
        pl.when(pl.col("review_id") == first)
        .then(pl.lit("two\nlines, quoted"))
        .otherwise(pl.col("review_comment_message"))
        .alias("review_comment_message")
    )
    snapshot = write_snapshot(cut, tmp_path / "snap", later)
    load(conn, snapshot)
    assert_same_rows(stored(conn), load_dataset(snapshot))


def test_a_quote_left_open_in_a_new_record_is_refused_with_its_line(
    loaded, tables: Tables, tmp_path: Path
) -> None:
    conn, last, _ = loaded
    before = stored(conn)
    snapshot = next_day_snapshot(tables, last, tmp_path)
    reviews = snapshot / TABLES["order_reviews"].file_name
    data = reviews.read_bytes()
    cut = data.rindex(b"\n", 0, len(data) - 1) + 1  # the last record gets an open quote
    reviews.write_bytes(data[:cut] + b'"' + data[cut:])
    with pytest.raises(InputDataError, match="never closed"):
        load(conn, snapshot)
    assert_same_rows(stored(conn), before)


@pytest.mark.slow
def test_the_frames_a_load_writes_are_freed_before_its_commit(tmp_path: Path) -> None:
    """The load writes every table's changes in one transaction: each frame its SQL reads
    must be freed once written, not held until the commit (a frame registered with the
    connection is), or a day's changes of every table add up in memory."""
    spec = TABLES["sellers"]
    conn = duckdb.connect(str(tmp_path / "w.duckdb"), config={"memory_limit": "64MB"})
    write_frame(conn, "raw", "sellers", pl.DataFrame(schema=spec.schema))
    write_frame(
        conn, HASH_SCHEMA, "sellers", pl.DataFrame(schema={"seller_id": pl.String, HASH: pl.UInt64})
    )
    rows, batches = 250_000, 10
    conn.execute("BEGIN TRANSACTION")
    resident = []
    for i in range(batches):
        ids = pl.int_range(i * rows, (i + 1) * rows, eager=True).cast(pl.String)
        typed = pl.DataFrame(
            {
                "seller_id": ("seller-" + ids + "-" + "x" * 40),
                "seller_zip_code_prefix": ["01000"] * rows,
                "seller_city": "city " + ids,
                "seller_state": ["SP"] * rows,
                ROW: pl.int_range(rows, eager=True),
                LINE: pl.int_range(rows, eager=True),
            }
        )
        hashes = typed.select("seller_id", pl.col(ROW).cast(pl.UInt64).alias(HASH))
        keys = pl.DataFrame(schema={"seller_id": pl.String})
        plan = _TablePlan(
            spec, "delta", keys=hashes, typed=typed, hashes=hashes, deleted=keys, updated=keys
        )
        batch_bytes = typed.estimated_size() + hashes.estimated_size()
        _write_delta(conn, plan)
        del typed, hashes, plan, ids
        resident.append(resident_bytes())
    conn.execute("COMMIT")
    assert conn.execute("SELECT count(*) FROM raw.sellers").fetchone()[0] == rows * batches
    conn.close()
    assert_flat(resident, batch_bytes)
