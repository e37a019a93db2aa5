from __future__ import annotations

import os
from datetime import date

import duckdb
import polars as pl
import pytest

from olist_churn_dagster.lib.warehouse import (
    WarehouseError,
    count_duplicate_keys,
    count_non_finite_rows,
    is_file_database,
    one_thread,
    open_warehouse,
    read_tables,
    sql_text,
    sql_text_list,
    table_exists,
    transaction,
    warehouse_exists,
    write_frame,
)
from olist_churn_dagster_tests.memory import assert_flat, resident_bytes


def _frame(day: str, values: list[float]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "reference_date": [date.fromisoformat(day)] * len(values),
            "seller_id": [f"s{i}" for i in range(len(values))],
            "value": values,
        }
    )


def test_partition_append_adds_new_columns(tmp_path):
    path = tmp_path / "w.duckdb"
    with transaction(path) as conn:
        write_frame(conn, "features", "t", _frame("2024-01-01", [1.0, 2.0]), append=True)
    with transaction(path) as conn:
        conn.execute("DELETE FROM features.t WHERE reference_date = '2024-01-02'")
        extra = _frame("2024-01-02", [3.0]).with_columns(pl.lit(7).alias("new_feature"))
        write_frame(conn, "features", "t", extra, append=True)
    with duckdb.connect(str(path)) as conn:
        table = conn.execute("SELECT * FROM features.t ORDER BY reference_date").pl()
    assert table.height == 3
    assert table["new_feature"].to_list() == [None, None, 7]


def test_a_partition_rewritten_with_a_new_column_commits(tmp_path):
    """What an IO manager does when a partitioned asset gains a column and a partition
    that has rows is materialized again: delete its rows, then append with the column, in
    one transaction (DuckDB refuses to commit an ALTER TABLE after that DELETE)."""
    path = tmp_path / "w.duckdb"
    with transaction(path) as conn:
        write_frame(conn, "ml", "t", _frame("2024-01-01", [1.0, 2.0]), append=True)
        write_frame(conn, "ml", "t", _frame("2024-01-02", [3.0]), append=True)
    with transaction(path) as conn:
        conn.execute("DELETE FROM ml.t WHERE reference_date = '2024-01-01'")
        again = _frame("2024-01-01", [4.0]).with_columns(pl.lit(7).alias("new_figure"))
        write_frame(conn, "ml", "t", again, append=True)
    with duckdb.connect(str(path)) as conn:
        table = conn.execute("SELECT * FROM ml.t ORDER BY reference_date").pl()
    assert table["value"].to_list() == [4.0, 3.0]
    assert table["new_figure"].to_list() == [7, None]


def test_frames_written_in_one_transaction_are_freed_before_its_commit(tmp_path):
    """A backfill writes all of a table's batches in one transaction: each batch must be
    freed once written, not held until the commit (with DuckDB's buffers capped here, the
    process would otherwise grow by about a batch per batch)."""
    rows, batches = 1_000_000, 10
    batch_bytes = rows * 6 * 8
    conn = duckdb.connect(str(tmp_path / "w.duckdb"), config={"memory_limit": "64MB"})
    conn.execute("BEGIN")
    resident = []
    for i in range(batches):
        batch = pl.select(
            (pl.int_range(rows, dtype=pl.Int64) + i * rows).cast(pl.Float64).alias(f"v{c}")
            for c in range(6)
        )
        write_frame(conn, "features", "t", batch, append=True)
        del batch
        resident.append(resident_bytes())
    conn.execute("COMMIT")
    assert conn.execute("SELECT count(*), max(v0) FROM features.t").fetchone() == (
        rows * batches,
        rows * batches - 1,
    )
    conn.close()
    assert_flat(resident, batch_bytes)


def test_failed_transaction_keeps_previous_rows(tmp_path):
    path = tmp_path / "w.duckdb"
    with transaction(path) as conn:
        write_frame(conn, "features", "t", _frame("2024-01-01", [1.0, 2.0]), append=True)
    with pytest.raises(RuntimeError), transaction(path) as conn:
        conn.execute("DELETE FROM features.t WHERE reference_date = '2024-01-01'")
        raise RuntimeError("killed halfway")
    with duckdb.connect(str(path)) as conn:
        assert conn.execute("SELECT count(*) FROM features.t").fetchone()[0] == 2


def test_one_thread_writes_on_one_thread_and_gives_the_setting_back(tmp_path):
    def threads(conn: duckdb.DuckDBPyConnection) -> int:
        return int(conn.execute("SELECT current_setting('threads')").fetchone()[0])

    with transaction(tmp_path / "w.duckdb") as conn:
        conn.execute("SET threads = 3")
        with one_thread(conn):
            assert threads(conn) == 1
            write_frame(conn, "features", "t", _frame("2024-01-01", [1.0, 2.0]))
        assert threads(conn) == 3
        with pytest.raises(RuntimeError), one_thread(conn):
            raise RuntimeError("the write failed")
        assert threads(conn) == 3
        assert conn.execute("SELECT sum(value) FROM features.t").fetchone()[0] == 3.0


def test_replace_follows_the_new_schema(tmp_path):
    path = tmp_path / "w.duckdb"
    with transaction(path) as conn:
        write_frame(conn, "raw", "t", pl.DataFrame({"a": [1]}))
        write_frame(conn, "raw", "t", pl.DataFrame({"b": ["x", "y"]}))
        assert read_tables(conn, "raw", ["t"])["t"].columns == ["b"]


def test_read_tables_reads_only_the_columns_asked_for(tmp_path):
    with transaction(tmp_path / "w.duckdb") as conn:
        write_frame(conn, "raw", "t", pl.DataFrame({"a": [1], "b": ["x"], "c": [2.0]}))
        write_frame(conn, "raw", "u", pl.DataFrame({"a": [3]}))
        out = read_tables(conn, "raw", ["t", "u"], columns={"t": ["c", "a"]})
    assert out["t"].columns == ["c", "a"]
    assert out["u"].columns == ["a"]


def test_missing_table_is_named(tmp_path):
    with (
        transaction(tmp_path / "w.duckdb") as conn,
        pytest.raises(WarehouseError, match=r"raw\.orders"),
    ):
        read_tables(conn, "raw", ["orders"])


def test_damaged_file_gives_recovery_advice(tmp_path):
    path = tmp_path / "w.duckdb"
    path.write_bytes(b"this is not a duckdb file" * 1000)
    with pytest.raises(WarehouseError, match="move it aside"):
        open_warehouse(path)


def test_data_directory_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(WarehouseError, match="cannot be created"):
        open_warehouse(blocker / "data" / "w.duckdb")


def test_read_only_directory_is_named(tmp_path, monkeypatch):
    # Root ignores permission bits, so the check is exercised through os.access itself.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(WarehouseError, match="read-only"):
        open_warehouse(tmp_path / "w.duckdb")


def test_missing_warehouse_for_reading(tmp_path):
    with pytest.raises(WarehouseError, match="does not exist yet"):
        open_warehouse(tmp_path / "none.duckdb", read_only=True)


def test_count_duplicate_keys(tmp_path):
    with transaction(tmp_path / "w.duckdb") as conn:
        frame = _frame("2024-01-01", [1.0, 2.0]).vstack(_frame("2024-01-01", [3.0]))
        write_frame(conn, "features", "t", frame)
        assert count_duplicate_keys(conn, "features.t", ["reference_date", "seller_id"]) == 1
        assert count_duplicate_keys(conn, "features.t", ["reference_date", "value"]) == 0
        write_frame(conn, "features", "t", _frame("2024-01-02", [1.0]), append=True)
        keys = ["reference_date", "seller_id"]
        on = "reference_date = DATE '2024-01-0{}'".format
        assert count_duplicate_keys(conn, "features.t", keys, on(1)) == 1
        assert count_duplicate_keys(conn, "features.t", keys, on(2)) == 0
        # one key value three times, another twice: two duplicate keys, three extra rows
        write_frame(conn, "features", "t", _frame("2024-01-01", [4.0, 5.0]), append=True)
        assert count_duplicate_keys(conn, "features.t", keys, on(1)) == 2


def test_count_non_finite_rows(tmp_path):
    with transaction(tmp_path / "w.duckdb") as conn:
        write_frame(conn, "features", "t", _frame("2024-01-01", [1.0, float("nan"), float("inf")]))
        write_frame(conn, "features", "u", _frame("2024-01-01", [1.0]).drop("value"))
        assert count_non_finite_rows(conn, "features.t") == 2
        assert count_non_finite_rows(conn, "features.u") == 0  # no float column
        write_frame(conn, "features", "t", _frame("2024-01-02", [float("nan")]), append=True)
        on = "reference_date = DATE '2024-01-0{}'".format
        assert count_non_finite_rows(conn, "features.t") == 3
        assert count_non_finite_rows(conn, "features.t", on(2)) == 1
        assert count_non_finite_rows(conn, "features.t", on(3)) == 0


def test_non_finite_rows_are_told_from_finite_values_whose_sum_overflows(tmp_path):
    frame = pl.DataFrame(
        {
            "a": [1e308, float("inf"), None, 1.0],
            "b": [1e308, float("-inf"), float("nan"), None],
        }
    )
    with transaction(tmp_path / "w.duckdb") as conn:
        write_frame(conn, "features", "t", frame)
        assert count_non_finite_rows(conn, "features.t") == 2  # the 2nd and 3rd rows
        assert count_non_finite_rows(conn, "features.t", "a = 1e308") == 0


@pytest.mark.parametrize(
    ("database", "is_file"),
    [
        ("/data/warehouse.duckdb", True),
        ("relative/w.duckdb", True),
        ("md:olist_churn", False),
        ("MD:olist_churn?attach_mode=single", False),
        ("motherduck:olist_churn", False),
        (":memory:", False),
    ],
)
def test_file_and_server_databases_are_told_apart(database, is_file):
    assert is_file_database(database) is is_file
    assert warehouse_exists(database) is (not is_file)  # none of the files exist


def test_inlined_values_read_back_as_written():
    """Catalog queries inline their values instead of binding them (see `sql_text`)."""
    values = ["plain", "it's", "a''b", "back\\slash", "", "ünï"]
    with duckdb.connect() as conn:
        assert [conn.execute(f"SELECT {sql_text(v)}").fetchone()[0] for v in values] == values
        assert conn.execute(f"SELECT {sql_text_list(values)}").fetchone()[0] == values
        conn.execute('CREATE SCHEMA "o\'s"')
        conn.execute('CREATE TABLE "o\'s"."t\'1" (a INT)')
        assert table_exists(conn, "o's", "t'1")
        assert not table_exists(conn, "o's", "t'2")
