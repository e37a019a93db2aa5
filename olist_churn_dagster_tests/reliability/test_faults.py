"""Faults: a run killed while it writes, an unusable data directory, a damaged warehouse
file, and input values that must never be read as SQL.

The killed run is a separate process (a real job on the session data directory:
`build_feature_store`, `load_raw_tables` or `rescore_with_champion`) that stops inside the
write transaction of a table, at a point it announces, and is then killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from olist_churn_dagster.defs.tags import range_tags
from olist_churn_dagster.defs.warehouse import warehouse_resources
from olist_churn_dagster.lib.features import FEATURE_FAMILIES
from olist_churn_dagster.lib.ingest.delta import HASH_SCHEMA, SALE_CHANGES
from olist_churn_dagster.lib.ingest.feed import FeedCursor, decide
from olist_churn_dagster.lib.ingest.loader import load_dataset
from olist_churn_dagster.lib.ingest.schema import TABLES
from olist_churn_dagster.lib.ingest.snapshots import write_snapshot
from olist_churn_dagster.lib.ml.tracking import champion_version
from olist_churn_dagster.lib.warehouse import WarehouseError, open_warehouse
from olist_churn_dagster_tests.conftest import REPO_ROOT
from olist_churn_dagster_tests.reliability.conftest import (
    demo_reference_keys,
    evaluate_snapshot_sensor,
    failure_message,
    run_job,
    skip_message,
    warehouse_checksums,
)

pytestmark = pytest.mark.slow

RECOVERY = "move it aside and rematerialize"
FEATURE_TABLES = [f"seller_{family}" for family in FEATURE_FAMILIES]
HOSTILE_SELLER_ID = "evil'); DROP TABLE raw.sellers; --\"x"
HOSTILE_FOLDER = "it's a \"quoted\" folder'; DROP TABLE raw.orders; --"
SMALL_SPLIT = {"n_test_cohorts": 2, "n_valid_cohorts": 1, "gap_cohorts": 1, "min_child_weight": 1.0}


@pytest.fixture(scope="module")
def partition_range(
    definitions: dg.Definitions, warehouse: Path, data_dir: Path
) -> tuple[str, str]:
    """The last two reference dates, with their feature partitions in the warehouse."""
    keys = demo_reference_keys(data_dir)
    first, last = keys[-2], keys[-1]
    result = run_job(definitions, "build_feature_store", partition_range=(first, last))
    assert result.success, failure_message(result)
    return first, last


def _rows_in_range(path: Path, table: str, span: tuple[str, str]) -> int:
    with duckdb.connect(str(path), read_only=True) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM features.{table} "
            "WHERE reference_date BETWEEN ?::DATE AND ?::DATE",
            list(span),
        ).fetchone()
    assert row is not None
    return int(row[0])


# --------------------------------------------------------------------------- the helper


def test_checksums_see_one_changed_value_a_duplicate_row_and_a_type(tmp_path: Path) -> None:
    base_path = tmp_path / "base.duckdb"
    with duckdb.connect(str(base_path)) as conn:
        conn.execute("CREATE SCHEMA s; CREATE TABLE s.t (a INTEGER, b VARCHAR)")
        conn.execute("INSERT INTO s.t VALUES (1, 'x'), (2, NULL)")
    base = warehouse_checksums(base_path)
    assert list(base) == ["s.t"] and base["s.t"].startswith("2 rows")
    changes = {
        "value": "UPDATE s.t SET b = 'y' WHERE a = 1",
        "null": "UPDATE s.t SET b = 'z' WHERE a = 2",
        "duplicate": "INSERT INTO s.t VALUES (1, 'x')",
        "type": "ALTER TABLE s.t ALTER a TYPE BIGINT",
        "new-table": "CREATE TABLE main.extra (c INTEGER)",
    }
    for name, change in changes.items():
        path = tmp_path / f"{name}.duckdb"
        shutil.copyfile(base_path, path)
        with duckdb.connect(str(path)) as conn:
            conn.execute(change)
        assert warehouse_checksums(path) != base, name
    assert warehouse_checksums(base_path) == base


# --------------------------------------------------------------------------- (a) killed run

CHILD = r"""
# Runs one project job and stops inside the write transaction of one table, at a point
# it announces: after the old rows were deleted, before the table is written, or after a
# tampered one-row write.
import json
import sys
import time

import dagster as dg

import olist_churn_dagster.defs.raw.assets as raw_assets
import olist_churn_dagster.defs.warehouse as defs_warehouse
import olist_churn_dagster.lib.ingest.delta as delta
import olist_churn_dagster.lib.warehouse as lib_warehouse
from olist_churn_dagster.bootstrap import load_definitions, range_tags

job_name, stage, schema, table, first, last, source, load = sys.argv[1:9]
partitioned = first != "-"


def targeted(target_schema, target_table):
    return target_schema == schema and table in ("*", target_table)


def hold(target_schema, target_table, connection):
    target = f'"{target_schema}"."{target_table}"'
    if partitioned:
        rows = connection.execute(
            f"SELECT count(*) FROM {target} WHERE reference_date BETWEEN ?::DATE AND ?::DATE",
            [first, last],
        ).fetchone()[0]
    else:
        rows = connection.execute(f"SELECT count(*) FROM {target}").fetchone()[0]
    names = connection.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = ? ORDER BY 1",
        [target_schema],
    ).fetchall()
    counts = {
        name: connection.execute(f'SELECT count(*) FROM "{target_schema}"."{name}"').fetchone()[0]
        for (name,) in names
    }
    print(
        f"HOLDING stage={stage} table={target_table} rows_in_range={rows} "
        f"counts={json.dumps(counts, separators=(',', ':'))}",
        flush=True,
    )
    time.sleep(600)


original_delete = defs_warehouse.TransactionalDuckDbClient.delete_table_slice
original_delete_partitions = lib_warehouse.delete_partition_rows
original_write = lib_warehouse.write_frame


def delete_then_hold(context, table_slice, connection):
    original_delete(context, table_slice, connection)
    if stage == "after-delete" and targeted(table_slice.schema, table_slice.table):
        hold(table_slice.schema, table_slice.table, connection)


def delete_partitions_then_hold(connection, target_schema, target_table, column, keys):
    # The feature tables delete their partitions themselves (`replace_partition_rows`).
    original_delete_partitions(connection, target_schema, target_table, column, keys)
    if stage == "after-delete" and targeted(target_schema, target_table):
        hold(target_schema, target_table, connection)


def held_write(conn, target_schema, target_table, frame, **kwargs):
    if targeted(target_schema, target_table):
        if stage == "before-write":
            hold(target_schema, target_table, conn)
        if stage == "after-insert":
            original_write(conn, target_schema, target_table, frame.head(1), **kwargs)
            hold(target_schema, target_table, conn)
    return original_write(conn, target_schema, target_table, frame, **kwargs)


# Every table of the project is written by `write_frame`, whichever module calls it.
defs_warehouse.TransactionalDuckDbClient.delete_table_slice = staticmethod(delete_then_hold)
lib_warehouse.delete_partition_rows = delete_partitions_then_hold
for module in (lib_warehouse, defs_warehouse, raw_assets, delta):
    if hasattr(module, "write_frame"):
        module.write_frame = held_write

job = load_definitions().resolve_job_def(job_name)
instance = dg.DagsterInstance.ephemeral()
if partitioned:
    instance.add_dynamic_partitions("reference_date", [first, last])
job.execute_in_process(
    instance=instance,
    tags=range_tags(first, last) if partitioned else None,
    # A load of a whole source (full_reload: each table is replaced by `write_frame`), or of
    # its changes (rows deleted and inserted by key, then the changed keys written).
    run_config=(
        {"ops": {"raw_tables": {"config": {"source": source, "full_reload": load == "full"}}}}
        if source != "-"
        else None
    ),
)
print("FINISHED without being killed", flush=True)
"""

_HOLDING = re.compile(r"HOLDING stage=(\S+) table=(\S+) rows_in_range=(\d+) counts=(\S+)")

KILL_STAGES = [
    pytest.param("after-delete", 0, id="killed-after-delete"),
    pytest.param("after-insert", 1, id="killed-after-tampered-insert"),
]


def _wait_for_hold(proc: subprocess.Popen[bytes], log: Path, deadline: float) -> re.Match[str]:
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        match = _HOLDING.search(text)
        if match:
            return match
        if proc.poll() is not None:
            pytest.fail(f"the child ended ({proc.returncode}) before holding:\n{text[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"the child never reached the write:\n{log.read_text(errors='replace')[-3000:]}")


def _kill_inside_a_write(
    children: list[subprocess.Popen[bytes]],
    folder: Path,
    *,
    job: str,
    stage: str,
    table: str,
    span: tuple[str, str] | None = None,
    source: Path | None = None,
    full_reload: bool = True,
) -> re.Match[str]:
    """Start `job` in a child process, wait until it holds inside the write transaction of
    `table` (`schema.table`, or `schema.*` for the first table of the schema), SIGKILL it
    there, and return what it announced while holding."""
    schema, name = table.split(".")
    script, log = folder / "killed_run.py", folder / "child.log"
    script.write_text(CHILD, encoding="utf-8")
    first, last = span or ("-", "-")
    load = "full" if full_reload else "changes"
    args = [job, stage, schema, name, first, last, str(source) if source else "-", load]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            cwd=REPO_ROOT,
            env=os.environ.copy(),  # the session's OLIST_CHURN_DATA_DIR and settings
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    children.append(proc)
    held = _wait_for_hold(proc, log, time.monotonic() + 150)
    assert held.group(1) == stage
    assert name in ("*", held.group(2))
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert "FINISHED" not in log.read_text(errors="replace")
    return held


@pytest.mark.parametrize(("stage", "rows_while_held"), KILL_STAGES)
def test_run_killed_inside_a_partition_write_keeps_the_previous_rows_and_rerun_repairs(
    stage: str,
    rows_while_held: int,
    definitions: dg.Definitions,
    warehouse: Path,
    partition_range: tuple[str, str],
    child_process: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    before = warehouse_checksums(warehouse)
    counts = {table: _rows_in_range(warehouse, table, partition_range) for table in FEATURE_TABLES}
    assert min(counts.values()) > 1  # a tampered 1-row write would be told apart

    held = _kill_inside_a_write(
        child_process,
        tmp_path,
        job="build_feature_store",
        stage=stage,
        table="features.*",
        span=partition_range,
    )
    assert held.group(2) in FEATURE_TABLES
    # Inside the child's open transaction the partition really was deleted (or replaced).
    assert int(held.group(3)) == rows_while_held

    assert warehouse_checksums(warehouse) == before
    assert _rows_in_range(warehouse, held.group(2), partition_range) == counts[held.group(2)]

    rerun = run_job(definitions, "build_feature_store", partition_range=partition_range)
    assert rerun.success, failure_message(rerun)
    assert {t: _rows_in_range(warehouse, t, partition_range) for t in FEATURE_TABLES} == counts
    assert warehouse_checksums(warehouse) == before  # the features are deterministic


# The raw load replaces nine tables: the kill lands in the first one's write, or halfway,
# when six tables were already replaced inside the run's transaction.
RAW_KILL_POINTS = [
    pytest.param("orders", "after-insert", id="first-table-after-tampered-insert"),
    pytest.param("sellers", "before-write", id="seventh-table-before-its-write"),
    pytest.param("sellers", "after-insert", id="seventh-table-after-tampered-insert"),
]


def _raw_only(sums: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in sums.items() if k.startswith("raw.")}


@pytest.mark.parametrize(("table", "stage"), RAW_KILL_POINTS)
def test_raw_load_killed_inside_its_write_keeps_every_previous_raw_table(
    table: str,
    stage: str,
    definitions: dg.Definitions,
    data_dir: Path,
    warehouse: Path,
    good_snapshot: Path,
    child_process: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """A raw load of other content (an earlier as-of snapshot) killed inside a table's
    write leaves all nine raw tables, and everything else, exactly as they were."""
    before = warehouse_checksums(warehouse)
    assert len(_raw_only(before)) == len(TABLES)
    incoming = load_dataset(good_snapshot)
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        stored = {
            name: conn.execute(f"SELECT count(*) FROM raw.{name}").fetchone()[0] for name in TABLES
        }
    assert stored[table] > 1  # a tampered 1-row write would be told apart
    assert stored["orders"] != incoming["orders"].height  # the snapshot's content differs

    try:
        held = _kill_inside_a_write(
            child_process,
            tmp_path,
            job="load_raw_tables",
            stage=stage,
            table=f"raw.{table}",
            source=good_snapshot,
        )
        assert warehouse_checksums(warehouse) == before
        # What the child's open transaction held when it was killed: the target table
        # replaced by one row (or not written yet) and, halfway, the tables before it
        # already replaced by the snapshot's content.
        assert int(held.group(3)) == (1 if stage == "after-insert" else stored[table])
        if table != "orders":
            assert json.loads(held.group(4))["orders"] == incoming["orders"].height

        # The load, run again to its end, brings the other content in whole.
        rerun = run_job(definitions, "load_raw_tables", source=good_snapshot)
        assert rerun.success, failure_message(rerun)
        with duckdb.connect(str(warehouse), read_only=True) as conn:
            orders = conn.execute("SELECT count(*) FROM raw.orders").fetchone()
        assert orders == (incoming["orders"].height,)
        assert _raw_only(warehouse_checksums(warehouse)) != _raw_only(before)
    finally:
        # Loading the session's files again restores the exact previous content, for the
        # tests after this one too.
        restore = run_job(definitions, "load_raw_tables", source=data_dir / "raw")
        assert restore.success, failure_message(restore)
    # Every table as before but the records of the loads (`_data_only`): they describe the
    # loads (changes, here), not the data. Inside the killed run above they were compared
    # with the rest, unchanged.
    assert _data_only(warehouse_checksums(warehouse)) == _data_only(before)


def _data_only(sums: dict[str, str]) -> dict[str, str]:
    """Without the records of the loads: the keys the last load changed (`ingest.<t>__changed`
    and `__deleted`, kept for the raw checks) and the sellers whose sales the loads changed
    (`ingest.sale_changes`, kept until a feature run reads them)."""
    records = ("__changed", "__deleted", f"{HASH_SCHEMA}.{SALE_CHANGES}")
    return {k: v for k, v in sums.items() if not k.endswith(records)}


def test_changes_load_killed_inside_its_transaction_keeps_every_previous_table(
    definitions: dg.Definitions,
    data_dir: Path,
    warehouse: Path,
    good_snapshot: Path,
    child_process: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """A snapshot loaded as its changes (rows deleted and inserted by key in the raw tables
    and the row-hash store), killed after the orders' changes were applied inside its
    transaction, leaves every table exactly as it was; run again, it lands whole."""
    before = warehouse_checksums(warehouse)
    incoming = load_dataset(good_snapshot)
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        stored = conn.execute("SELECT count(*) FROM ingest.orders").fetchone()[0]
    assert stored != incoming["orders"].height  # the snapshot's content differs
    try:
        held = _kill_inside_a_write(
            child_process,
            tmp_path,
            job="load_raw_tables",
            stage="after-insert",
            table="ingest.orders__changed",
            source=good_snapshot,
            full_reload=False,
        )
        # Inside the child's open transaction the orders' row hashes already were the
        # snapshot's (their changes applied), and the changed keys cut to one row.
        assert int(held.group(3)) == 1
        assert json.loads(held.group(4))["orders"] == incoming["orders"].height
        assert warehouse_checksums(warehouse) == before

        rerun = run_job(definitions, "load_raw_tables", source=good_snapshot)
        assert rerun.success, failure_message(rerun)
        with duckdb.connect(str(warehouse), read_only=True) as conn:
            orders = conn.execute("SELECT count(*) FROM raw.orders").fetchone()
            changed = conn.execute("SELECT count(*) FROM ingest.orders__changed").fetchone()
        assert orders == (incoming["orders"].height,)
        assert changed[0] > 0  # a load of changes, not of the whole source
    finally:
        restore = run_job(definitions, "load_raw_tables", source=data_dir / "raw")
        assert restore.success, failure_message(restore)
    assert _data_only(warehouse_checksums(warehouse)) == _data_only(before)


@pytest.fixture(scope="module")
def scored_range(
    definitions: dg.Definitions, data_dir: Path, warehouse: Path, partition_range: tuple[str, str]
) -> tuple[str, str]:
    """The last two reference dates with their churn scores in the warehouse, scored by a
    champion model (trained here when the session has none yet)."""
    uri = f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}"
    if champion_version(uri) is None:
        keys = demo_reference_keys(data_dir)
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("reference_date", keys)
        built = definitions.resolve_job_def("build_feature_store").execute_in_process(
            instance=instance, tags=range_tags(keys[0], keys[-1]), raise_on_error=False
        )
        assert built.success, failure_message(built)
        trained = definitions.resolve_job_def("train_churn_model").execute_in_process(
            instance=instance,
            run_config={"ops": {"ml__churn_model": {"config": SMALL_SPLIT}}},
            raise_on_error=False,
        )
        assert trained.success, failure_message(trained)
    assert champion_version(uri) is not None
    scored = run_job(definitions, "rescore_with_champion", partition_range=partition_range)
    assert scored.success, failure_message(scored)
    return partition_range


def _scores(path: Path, span: tuple[str, str]) -> pl.DataFrame:
    """The scores of the range without their timestamp (a rescore stamps a new one)."""
    with duckdb.connect(str(path), read_only=True) as conn:
        return conn.execute(
            "SELECT * EXCLUDE (scored_at) FROM ml.churn_scores "
            "WHERE reference_date BETWEEN ?::DATE AND ?::DATE ORDER BY reference_date, seller_id",
            list(span),
        ).pl()


@pytest.mark.parametrize(("stage", "rows_while_held"), KILL_STAGES)
def test_score_write_killed_keeps_the_previous_scores_and_rerun_repairs(
    stage: str,
    rows_while_held: int,
    definitions: dg.Definitions,
    warehouse: Path,
    scored_range: tuple[str, str],
    child_process: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    before = warehouse_checksums(warehouse)
    scores = _scores(warehouse, scored_range)
    assert scores.height > 1  # a tampered 1-row write would be told apart
    assert sorted(set(scores.get_column("reference_date").cast(pl.String))) == list(scored_range)

    held = _kill_inside_a_write(
        child_process,
        tmp_path,
        job="rescore_with_champion",
        stage=stage,
        table="ml.churn_scores",
        span=scored_range,
    )
    assert int(held.group(3)) == rows_while_held
    assert warehouse_checksums(warehouse) == before  # scored_at included: the old rows

    rerun = run_job(definitions, "rescore_with_champion", partition_range=scored_range)
    assert rerun.success, failure_message(rerun)
    # The same champion on the same features gives the same scores, freshly stamped.
    assert _scores(warehouse, scored_range).equals(scores)
    assert warehouse_checksums(warehouse)["ml.churn_scores"] != before["ml.churn_scores"]


# --------------------------------------------------------------------------- (b) data dir


def test_missing_data_dir_is_created_for_writing(tmp_path: Path) -> None:
    path = tmp_path / "not" / "there" / "yet" / "warehouse.duckdb"
    open_warehouse(path).close()
    assert path.is_file()


def test_missing_warehouse_for_reading_names_the_file_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "warehouse.duckdb"
    with pytest.raises(WarehouseError, match="does not exist yet: materialize the raw assets"):
        open_warehouse(path, read_only=True)
    assert not path.parent.exists()


def test_data_dir_under_a_regular_file_is_refused_clearly(tmp_path: Path) -> None:
    """Root ignores permission bits, so the unusable folder is one whose parent is a
    regular file: creating it fails for every user, root included."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n", encoding="utf-8")
    path = blocker / "data" / "warehouse.duckdb"
    with pytest.raises(WarehouseError) as caught:
        open_warehouse(path)
    assert f"data directory {path.parent} cannot be created" in str(caught.value)


def test_data_dir_under_a_regular_file_fails_the_job_clearly(
    definitions: dg.Definitions, data_dir: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n", encoding="utf-8")
    path = blocker / "data" / "warehouse.duckdb"
    result = run_job(
        definitions,
        "load_raw_tables",
        source=data_dir / "raw",
        resources=warehouse_resources(path),
    )
    assert not result.success
    message = failure_message(result)
    assert "WarehouseError" in message
    assert f"data directory {path.parent} cannot be created" in message


def test_read_only_data_dir_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated: as root every folder is writable, so the access check is made to say no;
    this checks the message an operator gets, not the kernel's refusal."""
    import olist_churn_dagster.lib.warehouse as warehouse_module

    monkeypatch.setattr(warehouse_module.os, "access", lambda *_args, **_kwargs: False)
    with pytest.raises(WarehouseError, match="is read-only; set OLIST_CHURN_DATA_DIR"):
        open_warehouse(tmp_path / "warehouse.duckdb")


# --------------------------------------------------------------------------- (c) damaged file


def _damaged_copy(kind: str, warehouse: Path, folder: Path) -> Path:
    path = folder / "warehouse.duckdb"
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "garbage":
        path.write_bytes(os.urandom(3) + b"this is not a database" * 5000)
    elif kind == "zero-bytes":
        path.write_bytes(b"")
    else:
        data = warehouse.read_bytes()
        path.write_bytes(data[: min(len(data) // 2, 65536)])  # header kept, blocks cut
    return path


@pytest.mark.parametrize(
    "kind",
    [
        "garbage",
        "zero-bytes",
        "truncated-copy",
    ],
)
def test_damaged_warehouse_gives_the_recovery(kind: str, warehouse: Path, tmp_path: Path) -> None:
    path = _damaged_copy(kind, warehouse, tmp_path / kind)
    with pytest.raises(WarehouseError) as caught:
        open_warehouse(path).close()
    message = str(caught.value)
    assert str(path) in message
    assert RECOVERY in message, message


def test_truncated_warehouse_is_refused_naming_the_file(warehouse: Path, tmp_path: Path) -> None:
    path = _damaged_copy("truncated-copy", warehouse, tmp_path)
    with pytest.raises(WarehouseError, match=re.escape(f"warehouse {path}")):
        open_warehouse(path).close()


def test_damaged_warehouse_fails_the_job_with_the_recovery(
    definitions: dg.Definitions, data_dir: Path, warehouse: Path, tmp_path: Path
) -> None:
    path = _damaged_copy("garbage", warehouse, tmp_path)
    damaged = path.read_bytes()
    result = run_job(
        definitions, "load_raw_tables", source=data_dir / "raw", resources=warehouse_resources(path)
    )
    assert not result.success
    message = failure_message(result)
    assert "WarehouseError" in message
    assert f"warehouse {path} is damaged or not a DuckDB file" in message
    assert RECOVERY in message
    assert path.read_bytes() == damaged  # left for the operator to move aside


def test_damaged_warehouse_fails_the_feature_job_at_once(
    definitions: dg.Definitions, warehouse: Path, tmp_path: Path
) -> None:
    """Steps that query through the warehouse resource fail at once with the recovery,
    instead of retrying a broken file for minutes."""
    import time

    path = _damaged_copy("garbage", warehouse, tmp_path)
    keys = demo_reference_keys(warehouse.parent)
    started = time.perf_counter()
    result = run_job(
        definitions,
        "build_feature_store",
        resources=warehouse_resources(path),
        partition_range=(keys[-2], keys[-1]),
    )
    assert not result.success
    assert RECOVERY in failure_message(result)
    assert time.perf_counter() - started < 60


# --------------------------------------------------------------------------- (d) no SQL from input


def test_source_and_warehouse_paths_with_quotes_load_the_same_tables(
    definitions: dg.Definitions, data_dir: Path, warehouse: Path, tmp_path: Path
) -> None:
    source = tmp_path / HOSTILE_FOLDER
    shutil.copytree(data_dir / "raw", source)
    other = tmp_path / f"{HOSTILE_FOLDER} warehouse" / "warehouse.duckdb"
    result = run_job(
        definitions, "load_raw_tables", source=source, resources=warehouse_resources(other)
    )
    assert result.success, failure_message(result)
    loaded = _raw_only(warehouse_checksums(other))
    expected = {k: v for k, v in warehouse_checksums(warehouse).items() if k.startswith("raw.")}
    assert loaded == expected
    assert len(loaded) == len(TABLES)


def test_snapshot_name_with_sql_is_skipped_as_not_a_date(
    definitions: dg.Definitions, warehouse: Path, good_snapshot: Path, snapshot_root: Path
) -> None:
    name = "2025-01-01'; DROP TABLE raw.orders; --"
    shutil.copytree(good_snapshot, snapshot_root / name)
    before = warehouse_checksums(warehouse)
    result = evaluate_snapshot_sensor(definitions)
    assert result.run_requests == []
    assert f"{name!r} is not named YYYY-MM-DD" in skip_message(result)
    assert warehouse_checksums(warehouse) == before


def test_snapshot_root_with_quotes_in_the_path_still_verifies(
    good_snapshot: Path, tmp_path: Path
) -> None:
    """Snapshot files are only read and hashed, never named in SQL: a quoted root works."""
    tables = load_dataset(good_snapshot)
    as_of = date.fromisoformat(good_snapshot.name)
    root = tmp_path / HOSTILE_FOLDER
    written = write_snapshot(tables, root, as_of)
    decision = decide(root, FeedCursor())
    assert [launch.path for launch in decision.launches] == [written]
    assert load_dataset(written)["orders"].equals(tables["orders"])


def _replace_seller(folder: Path, old: str, new: str) -> None:
    for table in ("sellers", "order_items"):
        path = folder / TABLES[table].file_name
        frame = pl.read_csv(path, infer_schema=False)
        seller = (
            pl.when(pl.col("seller_id") == old).then(pl.lit(new)).otherwise(pl.col("seller_id"))
        )
        frame.with_columns(seller.alias("seller_id")).write_csv(path, null_value="")


def _seller_rows(path: Path, table: str, seller_id: str, dates: tuple[str, str]) -> pl.DataFrame:
    """The seller's rows of the range (other tests may have filled more partitions)."""
    with duckdb.connect(str(path), read_only=True) as conn:
        frame = conn.execute(
            f"SELECT * FROM features.{table} WHERE seller_id = ? "
            "AND reference_date BETWEEN ?::DATE AND ?::DATE ORDER BY reference_date",
            [seller_id, *dates],
        ).pl()
    return frame.drop("seller_id")


def test_hostile_seller_id_round_trips_through_raw_and_features(
    definitions: dg.Definitions,
    data_dir: Path,
    warehouse: Path,
    partition_range: tuple[str, str],
    tmp_path: Path,
) -> None:
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        row = conn.execute(
            "SELECT seller_id FROM features.seller_sales WHERE reference_date = ?::DATE "
            "ORDER BY sales_items DESC, seller_id LIMIT 1",
            [partition_range[0]],
        ).fetchone()
        assert row is not None
        original = str(row[0])
        items = conn.execute(
            "SELECT count(*) FROM raw.order_items WHERE seller_id = ?", [original]
        ).fetchone()
    source = tmp_path / "raw"
    shutil.copytree(data_dir / "raw", source)
    _replace_seller(source, original, HOSTILE_SELLER_ID)
    other = tmp_path / "hostile" / "warehouse.duckdb"
    resources = warehouse_resources(other)

    loaded = run_job(definitions, "load_raw_tables", source=source, resources=resources)
    assert loaded.success, failure_message(loaded)
    built = run_job(
        definitions, "build_feature_store", partition_range=partition_range, resources=resources
    )
    assert built.success, failure_message(built)

    with duckdb.connect(str(other), read_only=True) as conn:
        sellers = conn.execute(
            "SELECT count(*) FROM raw.sellers WHERE seller_id = ?", [HOSTILE_SELLER_ID]
        ).fetchone()
        hostile_items = conn.execute(
            "SELECT count(*) FROM raw.order_items WHERE seller_id = ?", [HOSTILE_SELLER_ID]
        ).fetchone()
    assert sellers == (1,)
    assert hostile_items == items and items is not None and items[0] > 0
    tables = set(warehouse_checksums(other))
    assert {f"raw.{name}" for name in TABLES} | {f"features.{t}" for t in FEATURE_TABLES} <= tables
    for table in FEATURE_TABLES:
        hostile = _seller_rows(other, table, HOSTILE_SELLER_ID, partition_range)
        assert hostile.height == 2, table  # one row per reference date of the range
        assert hostile.equals(_seller_rows(warehouse, table, original, partition_range)), table
