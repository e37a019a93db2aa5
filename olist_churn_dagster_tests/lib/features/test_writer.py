"""The feature writer: each family's partitions replaced and committed before it is handed
back, the rows equal to `compute_features`, the next family's raw tables read while one
writes, and a failed family stopping the rest."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from olist_churn_dagster.generator.marketplace import generate_dataset
from olist_churn_dagster.lib.features import FEATURE_FAMILIES, compute_features, writer
from olist_churn_dagster.lib.features.writer import (
    RANGE_ORDER,
    FeatureSettings,
    RangeState,
    write_family_range,
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


def test_the_next_familys_raw_tables_are_read_while_one_writes(warehouse, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    read, write = connections(warehouse)
    reads: list[str] = []
    read_sources = writer.read_family_sources
    monkeypatch.setattr(
        writer,
        "read_family_sources",
        lambda opener, family: (reads.append(family), read_sources(opener, family))[1],
    )
    two = ["reviews", "sales"]
    with ThreadPoolExecutor(max_workers=1) as reader:
        # one batch is written at once: nothing to read meanwhile
        state = RangeState(read, two, reader=reader)
        write_family_range("reviews", DAYS, write, state, SETTINGS)
        assert reads == ["reviews"] and state.reads == {}
        small = FeatureSettings(180, 45, batch_rows=1)  # 10 dates: 2 batches of 7 and 3
        reads.clear()
        state = RangeState(read, two, reader=reader)
        write_family_range("reviews", DAYS, write, state, small)
        assert set(state.reads) == {"sales"}  # started once the timeline was built
        state.reads["sales"].result()
        assert reads == ["reviews", "sales"]
        write_family_range("sales", DAYS, write, state, small)
        assert reads == ["reviews", "sales"] and state.reads == {}  # not read twice
    alone = RangeState(read, two)  # without a reader thread, each family reads its own
    write_family_range("reviews", DAYS, write, alone, small)
    assert reads[2:] == ["reviews"] and alone.reads == {}


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
