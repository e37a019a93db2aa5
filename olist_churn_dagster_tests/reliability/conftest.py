"""Helpers of the bad-input and fault suite: a checksum of every warehouse table, runs of
the real jobs against a bad source, and evaluations of the snapshot sensor.

Everything that loads the Dagster definitions goes through the session fixtures of the
parent conftest (`data_dir`, `definitions`), so the one session data directory is used.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from olist_churn_dagster.defs.partitions import register_reference_dates
from olist_churn_dagster.defs.tags import range_tags
from olist_churn_dagster.lib.calendar import day_range, reference_dates
from olist_churn_dagster.lib.ingest.loader import load_dataset, purchase_date_range
from olist_churn_dagster.lib.ingest.snapshots import cut_as_of, write_snapshot
from olist_churn_dagster_tests.conftest import sensor_context


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def warehouse_checksums(path: Path) -> dict[str, str]:
    """`schema.table` -> row count, column names and types, and the sum of the hashes of
    the whole rows, for every table of every schema in the warehouse file.

    A sum (not a xor) so that a duplicated or a dropped duplicate row changes it too.
    Two queries whatever the number of tables: the columns of all, then one row per table.
    """
    conn = duckdb.connect(str(path), read_only=True)
    try:
        columns = {
            (schema, table): names
            for schema, table, names in conn.execute(
                "SELECT table_schema, table_name, "
                "list([column_name, data_type] ORDER BY ordinal_position) "
                "FROM information_schema.columns WHERE table_catalog = current_database() "
                "GROUP BY ALL"
            ).fetchall()
        }
        queries = [
            f"SELECT {i}, count(*), coalesce(sum(hash(whole_row)::HUGEINT), 0) "
            f"FROM {_quote_identifier(schema)}.{_quote_identifier(table)} AS whole_row"
            for i, (schema, table) in enumerate(columns)
        ]
        rows = conn.execute(" UNION ALL ".join(queries)).fetchall() if queries else []
    finally:
        conn.close()
    totals = {i: (count, total) for i, count, total in rows}
    checksums = {}
    for i, ((schema, table), described) in enumerate(columns.items()):
        count, total = totals[i]
        described = [tuple(column) for column in described]
        digest = hashlib.sha256(f"{count}|{total}|{described}".encode()).hexdigest()
        checksums[f"{schema}.{table}"] = f"{count} rows {digest[:20]}"
    return dict(sorted(checksums.items()))


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """Every step failure of a run, with its error chain, as one text."""
    texts = [
        event.step_failure_data.error.to_string()
        for event in result.all_events
        if event.is_step_failure and event.step_failure_data.error is not None
    ]
    return "\n".join(texts)


def run_job(
    definitions: dg.Definitions,
    job_name: str,
    *,
    source: Path | None = None,
    resources: Mapping[str, object] | None = None,
    partition_range: tuple[str, str] | None = None,
    partition_key: str | None = None,
) -> dg.ExecuteInProcessResult:
    """One in-process run of a project job; a failure is returned, not raised."""
    run_config = (
        {"ops": {"raw_tables": {"config": {"source": str(source)}}}} if source is not None else None
    )
    tags = range_tags(*partition_range) if partition_range else None
    instance = dg.DagsterInstance.ephemeral()
    # A fresh instance knows no reference dates: give the run's own their partitions.
    first, last = partition_range or (partition_key, partition_key)
    if first and last:
        days = day_range(date.fromisoformat(first), date.fromisoformat(last))
        register_reference_dates(instance, days)
    return definitions.resolve_job_def(job_name).execute_in_process(
        run_config=run_config,
        instance=instance,
        raise_on_error=False,
        resources=resources,
        tags=tags,
        partition_key=partition_key,
    )


def evaluate_snapshot_sensor(
    definitions: dg.Definitions, cursor: str | None = None
) -> dg.SensorResult:
    sensor = definitions.resolve_sensor_def("snapshot_sensor")
    context = sensor_context(definitions, instance=dg.DagsterInstance.ephemeral(), cursor=cursor)
    result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def skip_message(result: dg.SensorResult) -> str:
    assert result.skip_reason is not None, "the sensor gave no skip reason"
    return result.skip_reason.skip_message or ""


@pytest.fixture(scope="module")
def warehouse(definitions: dg.Definitions, data_dir: Path) -> Path:
    """The session warehouse, holding the raw tables of the good demo files."""
    result = run_job(definitions, "load_raw_tables")
    assert result.success, failure_message(result)
    return data_dir / "warehouse.duckdb"


def demo_reference_keys(data_dir: Path) -> list[str]:
    """The reference dates a raw load of the session's demo data registers."""
    first, last = purchase_date_range(data_dir / "raw")
    dates = reference_dates(first, last + timedelta(days=1), window_days=180)
    return [d.isoformat() for d in dates]


@pytest.fixture(scope="module")
def snapshot_day(data_dir: Path) -> date:
    """A snapshot date inside the reference-date partitions: the last purchase day."""
    return purchase_date_range(data_dir / "raw")[1]


@pytest.fixture(scope="module")
def good_snapshot(
    data_dir: Path, snapshot_day: date, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A complete, valid snapshot folder (outside the watched root) to copy from."""
    tables = load_dataset(data_dir / "raw")
    root = tmp_path_factory.mktemp("snapshot-template")
    return write_snapshot(cut_as_of(tables, snapshot_day), root, snapshot_day)


@pytest.fixture()
def snapshot_root(data_dir: Path) -> Iterator[Path]:
    """The watched snapshot folder, empty for the test and removed after it."""
    root = data_dir / "snapshots"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def child_process() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Child processes a test starts; any still running at its end is killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
