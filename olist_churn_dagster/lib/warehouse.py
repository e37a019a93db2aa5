"""Opening the DuckDB warehouse with errors an operator can act on.

The warehouse is a local DuckDB file by default, or a server database such as MotherDuck
(`md:<name>`). DuckDB's own messages for a locked, damaged or unwritable file are terse;
every path into the warehouse goes through `open_warehouse` so they are said once, clearly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl

# What DuckDB says when the file itself is broken (as opposed to locked or unreachable).
_DAMAGE_SIGNS = ("not a valid duckdb", "could not read enough bytes", "corrupt", "checksum")


# Database strings DuckDB resolves to a server rather than a local file.
_SERVER_PREFIXES = ("md:", "motherduck:")


class WarehouseError(RuntimeError):
    """The warehouse cannot be used; the message says why and what to do."""


class WarehouseLockedError(WarehouseError):
    """Another process holds the file (a writer, or a reader such as a notebook or the
    DuckDB CLI): transient, so worth retrying once that process lets go."""


_LOCK_PID = re.compile(r"\(PID (\d+)\)")


def lock_holder(message: str) -> str | None:
    """The process DuckDB names in a lock conflict, with its command line when readable."""
    found = _LOCK_PID.search(message)
    if not found:
        return None
    pid = found.group(1)
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"PID {pid}"
    command = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return f"PID {pid} ({command[:200]})" if command else f"PID {pid}"


def lock_backoff_seconds(retry_number: int, base_seconds: int, cap_seconds: int = 120) -> int:
    """Wait before retry `retry_number` + 1: doubling from `base_seconds`, capped."""
    return min(cap_seconds, base_seconds * 2 ** min(retry_number, 16))


def is_file_database(database: str | Path) -> bool:
    """Whether `database` names a local DuckDB file (not a server, not in memory)."""
    text = str(database)
    return text != ":memory:" and not text.lower().startswith(_SERVER_PREFIXES)


def warehouse_exists(database: str | Path) -> bool:
    """A local file exists; a server database is taken to (opening it says otherwise)."""
    return not is_file_database(database) or Path(database).exists()


def open_warehouse(database: str | Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Connect to the warehouse, creating a local file's folder when writing."""
    if is_file_database(database):
        path = Path(database)
        if read_only and not path.exists():
            raise WarehouseError(f"warehouse {path} does not exist yet: materialize the raw assets")
        if not read_only:
            _ensure_writable_dir(path.parent)
    try:
        return duckdb.connect(str(database), read_only=read_only)
    except duckdb.Error as exc:
        if not is_file_database(database):
            raise WarehouseError(f"warehouse {database} cannot be opened: {exc}") from exc
        if "lock" in str(exc).lower():
            raise WarehouseLockedError(_explain_lock(Path(database), str(exc))) from exc
        raise WarehouseError(_explain(Path(database), exc)) from exc


def _explain_lock(path: Path, text: str) -> str:
    holder = lock_holder(text) or "a process DuckDB did not name"
    return (
        f"warehouse {path} is locked by {holder}. A reader (a notebook, the DuckDB CLI, "
        "a BI tool) blocks writers too: close it and the run's retries go on by "
        f"themselves. Runs of this project share the 'warehouse' pool. DuckDB said: {text}"
    )


def _explain(path: Path, exc: Exception) -> str:
    text = str(exc)
    damaged = any(sign in text.lower() for sign in _DAMAGE_SIGNS)
    if isinstance(exc, duckdb.IOException) and not damaged:
        return f"warehouse {path} cannot be opened: {text}"
    return (
        f"warehouse {path} is damaged or not a DuckDB file ({text}). Recovery: move it "
        "aside and rematerialize the assets (raw tables first); every table in it is "
        "derived from the input files."
    )


def _ensure_writable_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WarehouseError(f"data directory {folder} cannot be created: {exc}") from exc
    if not os.access(folder, os.W_OK):
        raise WarehouseError(
            f"data directory {folder} is read-only; set OLIST_CHURN_DATA_DIR to a writable folder"
        )


@contextmanager
def transaction(database: str | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection inside one transaction: committed on success, rolled back on error,
    so a write interrupted halfway leaves the previous content in place."""
    with in_transaction(open_warehouse(database)) as conn:
        yield conn


@contextmanager
def in_transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """`transaction` on a connection already open; closes it at the end."""
    try:
        conn.execute("BEGIN TRANSACTION")
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()


def write_frame(
    conn: duckdb.DuckDBPyConnection,
    schema: str,
    table: str,
    frame: pl.DataFrame,
    *,
    append: bool = False,
) -> None:
    """Write a polars frame, replacing the table, or with `append` inserting by column name
    (the caller deletes the partition first, in the same transaction) and adding columns
    that the table does not have yet, so a new feature never breaks older partitions."""
    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    target = f'"{schema}"."{table}"'
    conn.register("_incoming_frame", frame.to_arrow())
    try:
        if not append or not _table_exists(conn, schema, table):
            conn.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM _incoming_frame")
            return
        _add_missing_columns(conn, schema, table)
        conn.execute(f"INSERT INTO {target} BY NAME SELECT * FROM _incoming_frame")
    finally:
        conn.unregister("_incoming_frame")


def _table_exists(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [schema, table],
    ).fetchone()
    return bool(row and row[0])


def _add_missing_columns(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> None:
    existing = {
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ?",
            [schema, table],
        ).fetchall()
    }
    incoming = conn.execute("DESCRIBE SELECT * FROM _incoming_frame").fetchall()
    for name, duck_type, *_ in incoming:
        if name not in existing:
            conn.execute(f'ALTER TABLE "{schema}"."{table}" ADD COLUMN "{name}" {duck_type}')


def read_tables(
    conn: duckdb.DuckDBPyConnection, schema: str, tables: Iterable[str]
) -> dict[str, pl.DataFrame]:
    """Whole tables of one schema as polars frames (through Arrow, no copies per row)."""
    missing = [t for t in tables if not _table_exists(conn, schema, t)]
    if missing:
        names = ", ".join(f"{schema}.{t}" for t in missing)
        raise WarehouseError(f"warehouse has no table {names}: materialize it first")
    return {t: conn.execute(f'SELECT * FROM "{schema}"."{t}"').pl() for t in tables}


def count_duplicate_keys(conn: duckdb.DuckDBPyConnection, table: str, key: Iterable[str]) -> int:
    """How many key values occur more than once in `schema.table`."""
    columns = ", ".join(f'"{c}"' for c in key)
    row = conn.execute(
        f"SELECT count(*) FROM (SELECT {columns} FROM {table} GROUP BY ALL HAVING count(*) > 1)"
    ).fetchone()
    return int(row[0]) if row else 0


def count_non_finite_rows(conn: duckdb.DuckDBPyConnection, table: str) -> int:
    """How many rows of `schema.table` hold a NaN or infinite value in a float column."""
    schema, name = table.split(".")
    floats = [
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? "
            "AND table_name = ? AND data_type IN ('DOUBLE', 'FLOAT')",
            [schema, name],
        ).fetchall()
    ]
    condition = " OR ".join(f'NOT isfinite("{c}")' for c in floats) or "FALSE"
    row = conn.execute(f"SELECT count(*) FROM {table} WHERE {condition}").fetchone()
    return int(row[0]) if row else 0
