"""The raw key and reference checks after a load of changes look at the changed rows
only, and still catch a broken key or reference there."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from olist_churn_dagster.defs.raw import checks
from olist_churn_dagster.lib.ingest.delta import apply_load, last_changes, plan_load
from olist_churn_dagster.lib.ingest.loader import load_dataset
from olist_churn_dagster.lib.ingest.snapshots import cut_as_of, write_snapshot


def _load(path: Path, snapshot: Path) -> None:
    with duckdb.connect(str(path)) as conn:
        conn.execute("BEGIN TRANSACTION")
        apply_load(conn, plan_load(conn, snapshot, full=False))
        conn.execute("COMMIT")


def _run(check, path: Path) -> tuple[bool, dict]:
    with duckdb.connect(str(path), read_only=True) as conn:
        result = check(conn)
    return result.passed, {k: getattr(v, "value", v) for k, v in result.metadata.items()}


@pytest.fixture(scope="module")
def tables(demo_raw_dir: Path) -> dict[str, pl.DataFrame]:
    return load_dataset(demo_raw_dir)


def test_checks_after_a_load_of_changes_look_at_the_changes(tables, tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    last = tables["orders"]["order_purchase_timestamp"].max().date()
    first_day = last - timedelta(days=10)
    _load(path, write_snapshot(cut_as_of(tables, first_day), tmp_path / "snap", first_day))

    def unique(conn):
        return checks.unique_key_result(conn, "order_items")

    def references(conn):
        return checks.reference_result(conn, "order_items")

    assert _run(unique, path) == (
        True,
        {"duplicate_keys": 0, "key": "order_id, order_item_id", "rows_checked": "all"},
    )
    assert _run(references, path)[1]["rows_checked"] == "all"

    day = last + timedelta(days=1)
    _load(path, write_snapshot(cut_as_of(tables, day), tmp_path / "snap", day))
    passed, metadata = _run(unique, path)
    assert passed and metadata["rows_checked"] == "changed"
    passed, metadata = _run(references, path)
    assert passed and metadata["rows_checked"] == "changed"

    # rows broken behind the loader's back, on keys the last load wrote: still caught
    with duckdb.connect(str(path)) as conn:
        changed, _ = last_changes(conn, "order_items")
        conn.execute(
            f"INSERT INTO raw.order_items SELECT * FROM raw.order_items "
            f"SEMI JOIN {changed} USING (order_id, order_item_id) LIMIT 1"
        )
        conn.execute(
            f"UPDATE raw.order_items SET seller_id = 'nobody' WHERE (order_id, order_item_id) "
            f"IN (SELECT (order_id, order_item_id) FROM {changed} LIMIT 1)"
        )
    passed, metadata = _run(unique, path)
    assert not passed and metadata["duplicate_keys"] == 1
    passed, metadata = _run(references, path)
    assert not passed and metadata["unknown_seller_id"] >= 1
