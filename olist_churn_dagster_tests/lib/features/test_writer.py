"""The feature writer: each family's partitions replaced and committed before it is handed
back, the rows equal to `compute_features`, each family's raw tables read in its own turn,
and a failed family stopping the rest."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from olist_churn_dagster.generator.marketplace import generate_dataset
from olist_churn_dagster.lib.features import (
    FEATURE_FAMILIES,
    compute_features,
    source_columns,
    writer,
)
from olist_churn_dagster.lib.features.writer import (
    RANGE_ORDER,
    FeatureSettings,
    write_features,
)
from olist_churn_dagster.lib.ingest.loader import load_dataset
from olist_churn_dagster.lib.tables import feature_table
from olist_churn_dagster.lib.warehouse import in_transaction, open_warehouse, write_frame

SETTINGS = FeatureSettings(window_days=180, horizon_days=45, batch_rows=1_500_000)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pl.DataFrame]:
    folder = tmp_path_factory.mktemp("writer") / "raw"
    generate_dataset(folder, scale=0.05, seed=9, start=date(2017, 1, 1), end=date(2018, 6, 30))
    return load_dataset(folder)


@pytest.fixture()
def warehouse(tmp_path: Path, raw: dict[str, pl.DataFrame]) -> Path:
    """A warehouse file holding the raw tables only."""
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as conn:
        for name, frame in raw.items():
            write_frame(conn, "raw", name, frame)
    return path


def connections(path: Path):
    """The read and write (transaction) openers a caller hands the writer."""

    @contextmanager
    def read() -> Iterator[duckdb.DuckDBPyConnection]:
        conn = open_warehouse(path)
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def write() -> Iterator[duckdb.DuckDBPyConnection]:
        with in_transaction(open_warehouse(path)) as conn:
            yield conn

    return read, write


DAYS = [date(2018, 3, 1) + timedelta(days=i) for i in range(10)]


def _stored(path: Path, family: str) -> pl.DataFrame:
    """The family's table as another connection sees it (only what is committed)."""
    read, _ = connections(path)
    with read() as conn:
        return conn.execute(f"SELECT * FROM {feature_table(family)}").pl()


def test_a_range_is_written_family_by_family_each_committed_when_handed_back(warehouse, raw):
    read, write = connections(warehouse)
    handed = []
    for written in write_features(read, write, FEATURE_FAMILIES, DAYS, SETTINGS):
        stored = _stored(warehouse, written.family)  # another connection: committed
        assert stored.height == written.rows > 0 and written.dates == DAYS
        assert written.batches == 1 and dict(written.schema) == dict(stored.schema)
        handed.append(written.family)
    assert handed == list(RANGE_ORDER)
    for family in FEATURE_FAMILIES:
        expected = compute_features(family, raw, DAYS)
        assert_frame_equal(_stored(warehouse, family), expected, check_column_order=False)


def test_one_date_replaces_only_its_partition_in_one_transaction(warehouse, raw):
    read, write = connections(warehouse)
    list(write_features(read, write, ["sales"], DAYS, SETTINGS))
    day = DAYS[4]
    (written,) = write_features(read, write, ["sales"], [day], SETTINGS)
    assert written.batches is None and written.dates == [day]
    stored = _stored(warehouse, "sales")
    assert sorted(set(stored.get_column("reference_date"))) == DAYS
    assert_frame_equal(
        stored.filter(pl.col("reference_date") == day),
        compute_features("sales", raw, [day]),
        check_column_order=False,
    )


def test_a_failed_family_writes_no_further_table(warehouse, monkeypatch):
    read, write = connections(warehouse)
    compute = writer.feature_batches

    def failing(family, *args, **kwargs):
        if family == RANGE_ORDER[1]:
            raise RuntimeError("out of memory")
        return compute(family, *args, **kwargs)

    monkeypatch.setattr(writer, "feature_batches", failing)
    written = write_features(read, write, FEATURE_FAMILIES, DAYS, SETTINGS)
    assert next(written).family == RANGE_ORDER[0]
    with pytest.raises(RuntimeError, match="out of memory"):
        next(written)
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        tables = {
            row[0] for row in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        }
    assert tables & {f"seller_{f}" for f in FEATURE_FAMILIES} == {f"seller_{RANGE_ORDER[0]}"}


def test_each_family_reads_its_raw_tables_in_its_own_turn_never_during_a_write(
    warehouse, monkeypatch
):
    """No read of raw tables overlaps a family's open write transaction: on a DuckLake
    such a read was seen to spin without end (scale 30 on the stack). Each read is slowed
    down so that an overlap, if the writer allowed one, would happen."""
    read, write = connections(warehouse)
    writing: list[str] = []  # non-empty while a write transaction is open
    reading: list[str] = []  # the families whose raw tables are being read
    overlaps: list[bool] = []

    @contextmanager
    def tracked_write() -> Iterator[duckdb.DuckDBPyConnection]:
        with write() as conn:
            overlaps.append(bool(reading))
            writing.append("open")
            try:
                yield conn
            finally:
                writing.clear()

    reads: list[str] = []
    read_sources = writer.read_family_sources

    def slow_read(opener, family: str):
        reads.append(family)
        reading.append(family)
        overlaps.append(bool(writing))
        try:
            time.sleep(0.5)
            return read_sources(opener, family)
        finally:
            overlaps.append(bool(writing))
            reading.remove(family)

    monkeypatch.setattr(writer, "read_family_sources", slow_read)
    small = FeatureSettings(180, 45, batch_rows=1)  # 10 dates: 2 batches of 7 and 3
    families = ["reviews", "sales", "payments"]
    written = [w.family for w in write_features(read, tracked_write, families, DAYS, small)]
    assert written == families
    assert reads == families  # once each, in the range's order
    assert overlaps and not any(overlaps)


class _Recording:
    """A connection that records the SQL run through it."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, statements: list[str]) -> None:
        self.conn, self.statements = conn, statements

    def execute(self, sql: str, *args: object) -> duckdb.DuckDBPyConnection:
        self.statements.append(sql)
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


def test_a_range_reads_the_orders_and_items_once_for_every_family(warehouse, raw):
    """Every family reads orders and items: a range reads them once, with the columns of
    all its families, and each other raw table once, for the family that reads it; the
    rows still equal `compute_features`."""
    read, write = connections(warehouse)
    statements: list[str] = []

    @contextmanager
    def recorded_read() -> Iterator[_Recording]:
        with read() as conn:
            yield _Recording(conn, statements)

    families = ["reviews", "sales", "customers"]
    list(write_features(recorded_read, write, families, DAYS, SETTINGS))
    for family in families:
        expected = compute_features(family, raw, DAYS)
        assert_frame_equal(_stored(warehouse, family), expected, check_column_order=False)
    scans = [s for s in statements if s.startswith("SELECT") and '"raw".' in s]
    for table in ("orders", "order_items", "order_reviews", "customers"):
        assert sum(f'"raw"."{table}"' in s for s in scans) == 1, table
    (orders,) = [s for s in scans if '"raw"."orders"' in s]
    for family in families:
        assert all(f'"{c}"' in orders for c in source_columns(family)["orders"])


def test_a_range_computes_and_writes_without_pandas(warehouse):
    """DuckDB imports pandas (about a second of CPU) for a bound parameter and, through
    `pyarrow.dataset`, for a scan of an Arrow table or a polars DataFrame: in a backfill
    that second would fall on the first family's compute, which nothing overlaps. Every
    family of a range, its writes and the checks' queries, in a fresh process, import
    neither."""
    code = f"""
import sys
from datetime import date
from olist_churn_dagster_tests.lib.features.test_writer import DAYS, SETTINGS, connections
from olist_churn_dagster.lib.features import FEATURE_FAMILIES
from olist_churn_dagster.lib.features.writer import write_features
from olist_churn_dagster.lib.warehouse import count_duplicate_keys, count_non_finite_rows
from pathlib import Path
read, write = connections(Path({str(warehouse)!r}))
for written in write_features(read, write, FEATURE_FAMILIES, DAYS, SETTINGS):
    with read() as conn:
        count_duplicate_keys(conn, written.table, ["reference_date", "seller_id"])
        count_non_finite_rows(conn, written.table)
print(sorted(m for m in ("pandas", "pyarrow.dataset") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
