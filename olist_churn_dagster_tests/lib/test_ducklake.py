"""The DuckLake warehouse through `open_warehouse`, on a real Postgres catalog and real
Parquet files: the project's writes run unchanged, a transaction is all or nothing, a
commit that loses to a concurrent writer says so, and bad settings are named."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from olist_churn_dagster.lib.warehouse import (
    WarehouseConflictError,
    WarehouseError,
    WarehouseUnreachableError,
    close_ducklakes,
    count_duplicate_keys,
    count_non_finite_rows,
    in_transaction,
    is_ducklake,
    is_file_database,
    open_warehouse,
    read_tables,
    warehouse_exists,
    write_frame,
)
from olist_churn_dagster.stack import postgres
from olist_churn_dagster_tests.ducklake import Lake, new_lake


@pytest.fixture()
def lake(postgres_server, tmp_path: Path) -> Iterator[Lake]:
    yield new_lake(postgres_server, tmp_path)
    close_ducklakes()


def _frame(day: str, values: list[float]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "reference_date": [date.fromisoformat(day)] * len(values),
            "seller_id": [f"s{i}" for i in range(len(values))],
            "value": values,
        }
    )


def _open(lake: Lake, **kwargs):
    return open_warehouse(lake.database, data_path=lake.data_path, **kwargs)


def _partition_write(lake: Lake, day: str, values: list[float]) -> None:
    with in_transaction(_open(lake)) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS features")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS features.t (reference_date DATE, seller_id VARCHAR, "
            "value DOUBLE)"
        )
        conn.execute("DELETE FROM features.t WHERE reference_date = ?::DATE", [day])
        write_frame(conn, "features", "t", _frame(day, values), append=True)


def test_a_ducklake_string_is_a_server_warehouse() -> None:
    database = "ducklake:postgres:dbname=lake host=127.0.0.1 port=5432 user=postgres"
    assert is_ducklake(database)
    assert not is_file_database(database)
    assert not is_ducklake("data/warehouse.duckdb")


def test_the_project_writes_run_unchanged_and_files_land_under_the_data_path(lake: Lake):
    assert not warehouse_exists(lake.database)
    with in_transaction(_open(lake)) as conn:
        write_frame(conn, "features", "t", _frame("2024-01-01", [1.0, 2.0]), append=True)
    assert warehouse_exists(lake.database)
    _partition_write(lake, "2024-01-02", [3.0, float("nan")])
    with in_transaction(_open(lake)) as conn:  # a new column on a later partition
        conn.execute("DELETE FROM features.t WHERE reference_date = '2024-01-02'")
        extra = _frame("2024-01-02", [3.0]).with_columns(pl.lit(7).alias("new_feature"))
        write_frame(conn, "features", "t", extra, append=True)

    conn = _open(lake, read_only=True)
    try:
        table = read_tables(conn, "features", ["t"])["t"].sort("reference_date", "seller_id")
        assert table["value"].to_list() == [1.0, 2.0, 3.0]
        assert table["new_feature"].to_list() == [None, None, 7]
        assert count_duplicate_keys(conn, "features.t", ["reference_date", "seller_id"]) == 0
        assert count_non_finite_rows(conn, "features.t") == 0
        with pytest.raises(WarehouseError, match=r"no table features\.absent"):
            read_tables(conn, "features", ["absent"])
    finally:
        conn.close()
    # A few rows are inlined in the catalog; a real partition goes to Parquet files.
    _partition_write(lake, "2024-01-03", [float(i) for i in range(1000)])
    assert list(lake.data_path.rglob("*.parquet")), "no Parquet file under the data path"


def test_a_whole_table_replace_follows_the_new_schema(lake: Lake) -> None:
    with in_transaction(_open(lake)) as conn:
        write_frame(conn, "ml", "abt", _frame("2024-01-01", [1.0]))
    with in_transaction(_open(lake)) as conn:
        write_frame(conn, "ml", "abt", pl.DataFrame({"other": ["x", "y"]}))
    conn = _open(lake, read_only=True)
    try:
        assert conn.execute("SELECT * FROM ml.abt ORDER BY 1").fetchall() == [("x",), ("y",)]
    finally:
        conn.close()


def test_a_failed_transaction_leaves_the_partition_as_it_was(lake: Lake) -> None:
    _partition_write(lake, "2024-01-01", [1.0, 2.0])
    with pytest.raises(RuntimeError), in_transaction(_open(lake)) as conn:
        conn.execute("DELETE FROM features.t WHERE reference_date = '2024-01-01'")
        write_frame(conn, "features", "t", _frame("2024-01-01", [9.0]), append=True)
        raise RuntimeError("killed halfway")
    conn = _open(lake, read_only=True)
    try:
        assert conn.execute("SELECT sum(value) FROM features.t").fetchone() == (3.0,)
    finally:
        conn.close()


def test_disjoint_fresh_partitions_commit_concurrently(lake: Lake) -> None:
    """Two transactions open at once, each inserting its own dates: both commit."""
    _partition_write(lake, "2024-01-01", [1.0])
    with in_transaction(_open(lake)) as first:
        write_frame(first, "features", "t", _frame("2024-01-02", [2.0]), append=True)
        with in_transaction(_open(lake)) as second:
            write_frame(second, "features", "t", _frame("2024-01-03", [3.0]), append=True)
    conn = _open(lake, read_only=True)
    try:
        assert conn.execute("SELECT count(*), sum(value) FROM features.t").fetchone() == (3, 6.0)
    finally:
        conn.close()


def test_a_commit_that_loses_to_a_concurrent_rewrite_is_a_conflict_and_writes_nothing(
    lake: Lake,
) -> None:
    """DuckLake checks conflicts per table: a transaction that replaces a partition while
    another one replaced a different partition of the same table and committed first is
    refused whole, with the error the Dagster layer retries."""
    for day in ("2024-01-01", "2024-01-02"):
        _partition_write(lake, day, [1.0, 2.0])
    with (
        pytest.raises(WarehouseConflictError, match="concurrent writer"),
        in_transaction(_open(lake)) as loser,
    ):
        loser.execute("DELETE FROM features.t WHERE reference_date = '2024-01-01'")
        write_frame(loser, "features", "t", _frame("2024-01-01", [5.0]), append=True)
        _partition_write(lake, "2024-01-02", [7.0])  # commits first
    conn = _open(lake, read_only=True)
    try:
        rows = conn.execute(
            "SELECT reference_date::VARCHAR, sum(value) FROM features.t GROUP BY 1 ORDER BY 1"
        ).fetchall()
    finally:
        conn.close()
    assert rows == [("2024-01-01", 3.0), ("2024-01-02", 7.0)]
    _partition_write(lake, "2024-01-01", [5.0])  # the same write again goes through


def test_a_lake_not_created_yet_reads_as_missing(lake: Lake) -> None:
    with pytest.raises(WarehouseError, match="does not exist yet: materialize the raw assets"):
        open_warehouse(lake.database, read_only=True)


def test_another_data_path_than_the_catalogs_is_refused_naming_the_setting(
    lake: Lake, tmp_path: Path
) -> None:
    _partition_write(lake, "2024-01-01", [1.0])
    with pytest.raises(WarehouseError, match="OLIST_CHURN_WAREHOUSE_DATA_PATH"):
        open_warehouse(lake.database, data_path=tmp_path / "elsewhere")


def test_a_new_lake_without_a_data_path_is_refused_naming_the_setting(lake: Lake) -> None:
    with pytest.raises(WarehouseError, match=r"needs a data path.*OLIST_CHURN_WAREHOUSE_DATA_PATH"):
        open_warehouse(lake.database)


def test_an_unreachable_catalog_is_named(postgres_server, tmp_path: Path) -> None:
    from olist_churn_dagster_tests.conftest import free_port

    database = f"ducklake:postgres:dbname=lake host=127.0.0.1 port={free_port()} user=postgres"
    with pytest.raises(WarehouseError, match=r"cannot be opened.*Postgres catalog reachable"):
        open_warehouse(database, data_path=tmp_path / "files")


@pytest.fixture()
def own_server(postgres_server) -> Iterator[postgres.PostgresServer]:
    """A Postgres server of the test's own (the session's password), free to restart."""
    from olist_churn_dagster_tests.conftest import free_port

    root = Path(tempfile.mkdtemp(prefix="olist-churn-pg-"))
    root.chmod(0o711)  # as root, Postgres runs as the `postgres` user
    server = postgres.start(root / "data", free_port(), postgres_server.password)
    yield server
    close_ducklakes()
    postgres.stop(server.data_dir)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_a_catalog_restarted_inside_a_transaction_is_retryable_and_writes_nothing(
    own_server: postgres.PostgresServer, tmp_path: Path
) -> None:
    """Postgres restarted (fast shutdown) while a write is open: its commit raises
    `WarehouseUnreachableError` (which steps retry), nothing of it is in the lake, and the
    next `open_warehouse` of the process attaches on a new session and writes."""
    lake = new_lake(own_server, tmp_path)
    _partition_write(lake, "2024-01-01", [1.0, 2.0])
    conn = _open(lake)
    lost = pytest.raises(WarehouseUnreachableError, match="nothing of its transaction")
    with lost, in_transaction(conn):
        conn.execute("DELETE FROM features.t")
        postgres.stop(own_server.data_dir)
        postgres.start(own_server.data_dir, own_server.port, own_server.password)
    _partition_write(lake, "2024-01-02", [3.0])
    rows = _open(lake).execute("SELECT count(*) FROM features.t").fetchone()
    assert rows == (3,)
