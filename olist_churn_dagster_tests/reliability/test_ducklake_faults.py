"""Nothing lost on a DuckLake: a run worker killed (SIGKILL) inside its write transaction
commits nothing, so no partition is ever partly written, and a rerun completes it.

The killed run is the same child process as for the DuckDB file (`test_faults`), with the
warehouse settings pointing at a DuckLake on the session's Postgres server."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from olist_churn_dagster.defs.warehouse import warehouse_resources
from olist_churn_dagster.lib.features import FEATURE_FAMILIES
from olist_churn_dagster.lib.warehouse import close_ducklakes, open_warehouse
from olist_churn_dagster_tests.ducklake import Lake, assert_same_tables, new_lake, warehouse_tables
from olist_churn_dagster_tests.reliability.conftest import (
    demo_reference_keys,
    failure_message,
    run_job,
)
from olist_churn_dagster_tests.reliability.test_faults import _kill_inside_a_write

pytestmark = pytest.mark.slow

FEATURE_TABLES = [f"seller_{family}" for family in FEATURE_FAMILIES]


@pytest.fixture()
def lake(postgres_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lake]:
    """A DuckLake with the raw tables loaded, set as the warehouse of child processes."""
    lake = new_lake(postgres_server, tmp_path / "files")
    for name, value in lake.env.items():
        monkeypatch.setenv(name, value)
    yield lake
    close_ducklakes()


def _rows_per_date(lake: Lake, span: tuple[str, str]) -> dict[str, list[tuple[str, int]]]:
    close_ducklakes()  # a fresh attach: what the catalog holds, as any new process sees it
    conn = open_warehouse(lake.database, read_only=True)
    try:
        return {
            table: conn.execute(
                f"SELECT reference_date::VARCHAR, count(*) FROM features.{table} "
                "WHERE reference_date BETWEEN ?::DATE AND ?::DATE GROUP BY 1 ORDER BY 1",
                list(span),
            ).fetchall()
            for table in FEATURE_TABLES
        }
    finally:
        conn.close()


@pytest.mark.parametrize("stage", ["after-delete", "after-insert"])
def test_a_rewrite_killed_inside_its_write_keeps_every_row_and_a_rerun_repairs(
    stage: str,
    definitions: dg.Definitions,
    data_dir: Path,
    lake: Lake,
    child_process: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    keys = demo_reference_keys(data_dir)
    span = (keys[-2], keys[-1])  # the child registers these two keys only
    resources = warehouse_resources(lake.database, lake.data_path)
    for job, job_span in (("load_raw_tables", None), ("build_feature_store", span)):
        done = run_job(definitions, job, resources=resources, partition_range=job_span)
        assert done.success, failure_message(done)
    before = warehouse_tables(lake.database)

    held = _kill_inside_a_write(
        child_process,
        tmp_path,
        job="build_feature_store",
        stage=stage,
        table="features.*",
        span=span,
    )
    # Inside the child's open transaction the partitions were deleted (or cut to one row).
    assert int(held.group(3)) == (0 if stage == "after-delete" else 1)
    close_ducklakes()
    assert_same_tables(before, warehouse_tables(lake.database))

    rerun = run_job(definitions, "build_feature_store", resources=resources, partition_range=span)
    assert rerun.success, failure_message(rerun)
    assert_same_tables(before, warehouse_tables(lake.database))  # the features are deterministic


def test_a_new_range_killed_halfway_leaves_no_partial_partition_and_a_rerun_completes_it(
    definitions: dg.Definitions,
    data_dir: Path,
    lake: Lake,
    child_process: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """The kill lands in the third table's write, after two tables were committed: those
    two hold the range whole, the others hold none of it, never some of its rows."""
    keys = demo_reference_keys(data_dir)
    old, new = (keys[-5], keys[-4]), (keys[-2], keys[-1])  # the child registers 2 keys
    resources = warehouse_resources(lake.database, lake.data_path)
    for job, job_span in (("load_raw_tables", None), ("build_feature_store", old)):
        done = run_job(definitions, job, resources=resources, partition_range=job_span)
        assert done.success, failure_message(done)
    before = warehouse_tables(lake.database)
    target = FEATURE_TABLES[2]

    held = _kill_inside_a_write(
        child_process,
        tmp_path,
        job="build_feature_store",
        stage="after-insert",
        table=f"features.{target}",
        span=new,
    )
    assert held.group(2) == target and int(held.group(3)) == 1
    after_kill = _rows_per_date(lake, new)
    assert after_kill[target] == []  # the one row inserted inside the transaction is not there
    days = 2
    for table, rows in after_kill.items():
        assert len(rows) in (0, days), (table, rows)  # every date of the range, or none
    unchanged = warehouse_tables(lake.database)
    for name, frame in before.items():
        if name.startswith("raw."):
            assert unchanged[name].equals(frame), name

    rerun = run_job(definitions, "build_feature_store", resources=resources, partition_range=new)
    assert rerun.success, failure_message(rerun)
    completed = _rows_per_date(lake, new)
    assert all(len(rows) == days for rows in completed.values()), completed
    # Each table of the range holds the same sellers per date as the sales table.
    assert len({tuple(rows) for rows in completed.values()}) == 1
