"""The project's jobs on a DuckLake warehouse (catalog on a real Postgres server, Parquet
files in a test folder) through the same IO manager and resource as the DuckDB file:
the same rows cell for cell, a lost commit retried by Dagster, and two backfills of
disjoint date ranges writing at the same time from two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

import olist_churn_dagster.lib.warehouse as lib_warehouse
from olist_churn_dagster.defs.warehouse import warehouse_resources
from olist_churn_dagster.lib.warehouse import close_ducklakes, in_transaction, open_warehouse
from olist_churn_dagster_tests.conftest import REPO_ROOT
from olist_churn_dagster_tests.ducklake import Lake, assert_same_tables, new_lake, warehouse_tables
from olist_churn_dagster_tests.reliability.conftest import (
    demo_reference_keys,
    failure_message,
    run_job,
)

pytestmark = pytest.mark.slow


def _resources(lake: Lake) -> dict:
    return warehouse_resources(lake.database, lake.data_path)


def _build(definitions: dg.Definitions, resources: dict, spans: list[tuple[str, str]]) -> None:
    """The raw load, then one feature backfill per span."""
    loaded = run_job(definitions, "load_raw_tables", resources=resources)
    assert loaded.success, failure_message(loaded)
    for span in spans:
        built = run_job(
            definitions, "build_feature_store", resources=resources, partition_range=span
        )
        assert built.success, failure_message(built)


@pytest.fixture(scope="module")
def spans(data_dir: Path) -> dict[str, tuple[str, str]]:
    """Three disjoint ranges of reference dates: one built first, then two more."""
    keys = demo_reference_keys(data_dir)
    return {
        "first": (keys[-30], keys[-26]),
        "a": (keys[-20], keys[-13]),
        "b": (keys[-8], keys[-1]),
    }


@pytest.fixture(scope="module")
def single_file(definitions, spans, tmp_path_factory) -> dict:
    """Every table of a DuckDB-file warehouse holding the raw tables and all three ranges."""
    path = tmp_path_factory.mktemp("single-file") / "warehouse.duckdb"
    _build(definitions, warehouse_resources(path), list(spans.values()))
    return warehouse_tables(str(path))


@pytest.fixture()
def lake(postgres_server, tmp_path: Path) -> Iterator[Lake]:
    yield new_lake(postgres_server, tmp_path)
    close_ducklakes()


def test_ducklake_holds_what_the_single_file_holds_cell_for_cell(
    definitions, spans, single_file, lake: Lake
) -> None:
    # The ranges in another order, and range a rewritten over rows already there.
    _build(definitions, _resources(lake), [spans["b"], spans["a"], spans["first"], spans["a"]])
    tables = warehouse_tables(lake.database)
    assert {"raw.orders", "features.seller_sales", "features.seller_products"} <= set(tables)
    assert_same_tables(single_file, tables)


def test_a_commit_lost_to_a_concurrent_writer_is_retried_and_lands(
    definitions, spans, single_file, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the run writes range a, another writer rewrites a partition of the same table
    and commits first: DuckLake refuses the run's commit whole, the step is retried by
    Dagster (`RetryRequested`) on the new snapshot, and the run succeeds."""
    resources = _resources(lake)
    _build(definitions, resources, [spans["first"], spans["b"]])
    original = lib_warehouse.write_frame
    interfered: list[str] = []

    def write_after_another_writer(conn, schema, table, frame, **kwargs):
        if not interfered:
            interfered.append(f"{schema}.{table}")
            day = spans["first"][0]
            with in_transaction(open_warehouse(lake.database)) as other:  # same rows back
                rows = other.execute(
                    f"SELECT * FROM {schema}.{table} WHERE reference_date = ?::DATE", [day]
                ).pl()
                assert rows.height > 0, f"{schema}.{table} has no rows for {day}"
                other.execute(f"DELETE FROM {schema}.{table} WHERE reference_date = ?::DATE", [day])
                other.register("same_rows", rows.to_arrow())
                other.execute(f"INSERT INTO {schema}.{table} SELECT * FROM same_rows")
        return original(conn, schema, table, frame, **kwargs)

    monkeypatch.setattr(lib_warehouse, "write_frame", write_after_another_writer)
    result = run_job(
        definitions, "build_feature_store", resources=resources, partition_range=spans["a"]
    )
    assert result.success, failure_message(result)
    retried = [
        e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
    ]
    assert len(retried) == 1 and interfered
    assert "concurrent writer" in str(retried[0].event_specific_data)
    assert retried[0].event_specific_data.seconds_to_wait == 1  # not a file lock's 5 s
    assert_same_tables(single_file, warehouse_tables(lake.database))


BACKFILL = r"""
# One feature backfill over a range in its own process, on the warehouse of the
# environment. It waits at its first write, inside its write transaction, until the other
# backfill has reached its own: the two transactions are open at the same time.
import json
import sys
import time
from datetime import date
from pathlib import Path

import dagster as dg

import olist_churn_dagster.lib.warehouse as lib_warehouse
from olist_churn_dagster.bootstrap import load_definitions
from olist_churn_dagster.defs.partitions import register_reference_dates
from olist_churn_dagster.defs.tags import range_tags
from olist_churn_dagster.lib.calendar import day_range

first, last, barrier, me = sys.argv[1:5]
original = lib_warehouse.write_frame
arrived = []


def write_with_the_other(conn, schema, table, frame, **kwargs):
    if not arrived:
        arrived.append(time.time())
        (Path(barrier) / me).touch()
        deadline = time.monotonic() + 180
        while len(list(Path(barrier).iterdir())) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the other backfill never reached its write")
            time.sleep(0.05)
    return original(conn, schema, table, frame, **kwargs)


lib_warehouse.write_frame = write_with_the_other
instance = dg.DagsterInstance.ephemeral()
register_reference_dates(instance, day_range(date.fromisoformat(first), date.fromisoformat(last)))
result = load_definitions().resolve_job_def("build_feature_store").execute_in_process(
    instance=instance, tags=range_tags(first, last), raise_on_error=False
)
retries = [
    str(e.event_specific_data)
    for e in result.all_events
    if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
]
print("RESULT " + json.dumps({"success": result.success, "retries": retries}), flush=True)
"""


def _concurrent_backfills(lake: Lake, spans: dict, tmp_path: Path) -> list[dict]:
    """Ranges a and b as two processes at once; what each reported."""
    script, barrier = tmp_path / "backfill.py", tmp_path / "barrier"
    script.write_text(BACKFILL, encoding="utf-8")
    barrier.mkdir()
    env = {**os.environ, **lake.env}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *spans[name], str(barrier), name],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("a", "b")
    ]
    reports = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=600)
            line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
            assert line is not None, out[-4000:]
            reports.append(json.loads(line.removeprefix("RESULT ")))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return reports


def test_two_backfills_of_new_dates_write_at_once_from_two_processes(
    definitions, spans, single_file, lake: Lake, tmp_path: Path
) -> None:
    """The tables exist (range `first`); ranges a and b are new: both processes commit
    their partitions while the other's transaction is open, with no retry."""
    _build(definitions, _resources(lake), [spans["first"]])
    reports = _concurrent_backfills(lake, spans, tmp_path)
    assert [r["success"] for r in reports] == [True, True], reports
    assert [r["retries"] for r in reports] == [[], []]
    assert_same_tables(single_file, warehouse_tables(lake.database))


def test_two_backfills_rewriting_their_dates_at_once_both_land(
    definitions, spans, single_file, lake: Lake, tmp_path: Path
) -> None:
    """Ranges a and b rewritten at once: DuckLake refuses the second commit to a table
    both replaced rows of (its conflicts are per table), Dagster retries that step, and
    both backfills land."""
    _build(definitions, _resources(lake), list(spans.values()))
    reports = _concurrent_backfills(lake, spans, tmp_path)
    assert [r["success"] for r in reports] == [True, True], reports
    retries = [text for r in reports for text in r["retries"]]
    assert retries and all("concurrent writer" in text for text in retries)
    assert_same_tables(single_file, warehouse_tables(lake.database))
