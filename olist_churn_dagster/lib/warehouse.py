"""Opening the DuckDB warehouse with errors an operator can act on.

The warehouse is a local DuckDB file by default (one writer process at a time), a
DuckLake (`ducklake:postgres:<libpq string>`: its catalog in Postgres, its data as Parquet
files under a data path; several writer processes at once), or a server database such as
MotherDuck (`md:<name>`). Every path into the warehouse goes through `open_warehouse`, so a
DuckLake is attached and made the default catalog in one place, and the SQL of the project
(`features.seller_sales`, ...) runs unchanged on all of them. DuckDB's own messages for a
locked, damaged or unwritable file are terse; they are said once here, clearly.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb
import polars as pl

# What DuckDB says when the file itself is broken (as opposed to locked or unreachable).
_DAMAGE_SIGNS = ("not a valid duckdb", "could not read enough bytes", "corrupt", "checksum")


# Database strings DuckDB resolves to a server rather than a local file.
DUCKLAKE_PREFIX = "ducklake:"
_SERVER_PREFIXES = ("md:", "motherduck:", DUCKLAKE_PREFIX)
# The name a DuckLake is attached under; `USE` makes it the default catalog.
DUCKLAKE_ALIAS = "lake"


class WarehouseError(RuntimeError):
    """The warehouse cannot be used; the message says why and what to do."""


class WarehouseLockedError(WarehouseError):
    """Another process holds the file (a writer, or a reader such as a notebook or the
    DuckDB CLI): transient, so worth retrying once that process lets go."""


class WarehouseConflictError(WarehouseError):
    """A DuckLake commit lost to a concurrent writer of the same table (DuckLake refuses a
    commit that inserts into a table another transaction deleted from since it began, or
    creates what another one created): nothing of it was committed, and the same write
    started again on the new snapshot succeeds, so it is worth retrying."""


class WarehouseUnreachableError(WarehouseError):
    """A DuckLake's Postgres catalog was lost in the middle of a step (the server restarted,
    the network cut): nothing of the transaction was committed (DuckLake commits its
    metadata in one catalog transaction), and the same write on a new catalog session
    succeeds once the server is back, so it is worth retrying."""


# What DuckDB's postgres extension says when the catalog's session is gone or cannot be
# opened (libpq's messages; a ROLLBACK only fails without a session).
_CATALOG_LOST_SIGNS = (
    "server closed the connection",
    "terminating connection",
    "no connection to the server",
    "connection refused",
    "could not connect",
    "the database system is shutting down",
    "the database system is starting up",
    'failed to execute query "rollback"',
)


def catalog_lost(exc: BaseException) -> bool:
    """Whether a DuckDB error says the DuckLake's catalog session was lost or refused."""
    text = str(exc).lower()
    return isinstance(exc, duckdb.Error) and any(sign in text for sign in _CATALOG_LOST_SIGNS)


def unreachable(exc: duckdb.Error) -> WarehouseUnreachableError:
    """The error to raise for a lost catalog session. This process's attached DuckLakes
    are forgotten (not closed: other threads may hold cursors of them), so the next
    `open_warehouse` attaches on a new session."""
    with _LAKES_LOCK:
        for key in [key for key in _LAKES if key[0] == os.getpid()]:
            _LAKES.pop(key)
    return WarehouseUnreachableError(
        "the warehouse's catalog (Postgres) was lost during this step; nothing of its "
        f"transaction was committed. DuckDB said: {exc}"
    )


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


def is_ducklake(database: str | Path) -> bool:
    """Whether `database` is a DuckLake (`ducklake:<catalog>`), which takes several writers."""
    return str(database).lower().startswith(DUCKLAKE_PREFIX)


def warehouse_exists(database: str | Path) -> bool:
    """A local file exists; a DuckLake exists once its catalog was created (an unreachable
    catalog is an error, not a no); another server database is taken to exist."""
    if is_ducklake(database):
        try:
            open_warehouse(database, read_only=True).close()
        except WarehouseError as exc:
            if "does not exist yet" in str(exc):
                return False
            raise
        return True
    return not is_file_database(database) or Path(database).exists()


def open_warehouse(
    database: str | Path, *, read_only: bool = False, data_path: str | Path | None = None
) -> duckdb.DuckDBPyConnection:
    """Connect to the warehouse, creating a local file's folder when writing.

    `data_path` is where a DuckLake keeps its Parquet files: needed to create one, checked
    against the catalog's own afterwards (ignored for other databases)."""
    if is_ducklake(database):
        return _open_ducklake(str(database), read_only=read_only, data_path=data_path)
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


@functools.cache
def _install_ducklake_extensions() -> None:
    """Install the DuckLake and Postgres extensions from their Python wheels (pinned with
    duckdb, so no download), once per process; each DuckDB instance then `LOAD`s them."""
    from duckdb_extensions import import_extension

    with duckdb.connect() as conn:
        for name in ("ducklake", "postgres"):
            import_extension(name, con=conn)


def sql_text(value: str) -> str:
    """`value` as a DuckDB string literal. The catalog queries and partition deletes on the
    runs' paths inline their values this way instead of binding them: DuckDB's Python client
    imports pandas on the first bound parameter of a process (about a second of CPU, in the
    step that needs its result first, e.g. a backfill's first feature table)."""
    return "'" + value.replace("'", "''") + "'"


def sql_text_list(values: Iterable[str]) -> str:
    """`values` as a DuckDB VARCHAR[] literal (see `sql_text`)."""
    return "[" + ", ".join(sql_text(v) for v in values) + "]::VARCHAR[]"


# One in-memory DuckDB per process and DuckLake, the lake attached: loading the extensions
# and attaching cost more than most queries, so every `open_warehouse` hands out a cursor of it (a
# connection of its own, with its own transactions). Keyed by process id too, so a forked
# child never shares its parent's Postgres sessions.
_LAKES: dict[tuple[int, str, bool, str | None], duckdb.DuckDBPyConnection] = {}
_LAKES_LOCK = threading.Lock()


def _open_ducklake(
    database: str, *, read_only: bool, data_path: str | Path | None
) -> duckdb.DuckDBPyConnection:
    """A connection on which `schema.table` resolves in the DuckLake (attached, in `USE`)."""
    path = _lake_data_path(data_path, read_only=read_only)
    key = (os.getpid(), database, read_only, path)
    with _LAKES_LOCK:
        base = _LAKES.get(key)
        if base is None:
            base = _LAKES[key] = _attach_ducklake(database, read_only=read_only, data_path=path)
        try:
            conn = base.cursor()
            conn.execute(f"USE {DUCKLAKE_ALIAS}")
        except duckdb.Error:
            # A base whose catalog session broke (Postgres restarted): attach afresh, once.
            _LAKES.pop(key, None)
            base = _LAKES[key] = _attach_ducklake(database, read_only=read_only, data_path=path)
            conn = base.cursor()
            conn.execute(f"USE {DUCKLAKE_ALIAS}")
    return conn


def close_ducklakes() -> None:
    """Detach every DuckLake this process attached, ending its catalog sessions (a test's
    own Postgres database, a long-lived process); the next `open_warehouse` attaches again."""
    with _LAKES_LOCK:
        while _LAKES:
            _, base = _LAKES.popitem()
            with suppress(duckdb.Error):
                base.close()


def _lake_data_path(data_path: str | Path | None, *, read_only: bool) -> str | None:
    """The data path as DuckLake stores it: a local folder absolute with a trailing
    separator (created when writing), an object-store URL as given."""
    if data_path is None:
        return None
    text = str(data_path)
    if "://" in text:
        return text
    folder = Path(text).expanduser().resolve()
    if not read_only:
        _ensure_writable_dir(folder)
    return str(folder) + os.sep


def _attach_ducklake(
    database: str, *, read_only: bool, data_path: str | None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake attached. Its spill folder is a fresh one under
    the system temp dir (DuckDB removes it at close), never the working directory."""
    options = ["READ_ONLY"] if read_only else []
    if data_path is not None:
        options.append(f"DATA_PATH {sql_text(data_path)}")
    spill = Path(tempfile.gettempdir()) / f"olist-churn-duckdb-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _install_ducklake_extensions()
        conn = duckdb.connect(":memory:", config={"temp_directory": str(spill)})
    except duckdb.Error as exc:
        raise WarehouseError(f"DuckLake extensions cannot be loaded: {exc}") from exc
    try:
        conn.execute("LOAD ducklake")
        conn.execute("LOAD postgres")
        attach = f"ATTACH {sql_text(database)} AS {DUCKLAKE_ALIAS}"
        conn.execute(attach + (f" ({', '.join(options)})" if options else ""))
    except duckdb.Error as exc:
        conn.close()
        error = WarehouseUnreachableError if catalog_lost(exc) else WarehouseError
        raise error(_explain_ducklake(database, data_path, str(exc))) from exc
    return conn


def _explain_ducklake(database: str, data_path: str | Path | None, text: str) -> str:
    lowered = text.lower()
    if "does not exist" in lowered and "creating a new ducklake" in lowered:
        return f"warehouse {database} does not exist yet: materialize the raw assets"
    if "data_path" in lowered and "does not match" in lowered:
        return (
            f"warehouse {database} keeps its data files elsewhere than {data_path}: set "
            f"OLIST_CHURN_WAREHOUSE_DATA_PATH to the catalog's path. DuckDB said: {text}"
        )
    if "data_path is not set" in lowered:
        return (
            f"warehouse {database} is new and needs a data path for its files: set "
            "OLIST_CHURN_WAREHOUSE_DATA_PATH"
        )
    return (
        f"warehouse {database} cannot be opened (is its Postgres catalog reachable, the "
        f"database created, the data path {data_path} reachable?): {text}"
    )


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
    """`transaction` on a connection already open; closes it at the end. A commit that a
    DuckLake refuses for a concurrent writer raises `WarehouseConflictError` (DuckDB has
    already rolled it back); one whose catalog session was lost, inside the transaction or
    at its commit, `WarehouseUnreachableError`."""
    try:
        conn.execute("BEGIN TRANSACTION")
        try:
            yield conn
        except BaseException as exc:
            _rollback(conn)
            if catalog_lost(exc):
                raise unreachable(exc) from exc
            raise
        try:
            conn.execute("COMMIT")
        except duckdb.Error as exc:
            _rollback(conn)
            if catalog_lost(exc):
                raise unreachable(exc) from exc
            if not isinstance(exc, duckdb.TransactionException) or "conflict" not in str(exc):
                raise
            raise WarehouseConflictError(
                f"the warehouse refused this commit for a concurrent writer; nothing of it "
                f"was written. DuckDB said: {exc}"
            ) from exc
    finally:
        conn.close()


@contextmanager
def one_thread(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """The connection's database on one thread, then back on its own setting: for a write
    that overlaps other compute (a backfill computing its next batch meanwhile). DuckDB's
    parallel insert compresses each thread's rows apart and rewrites the partial row
    groups at the checkpoint; one thread writes full row groups once, in less CPU and a
    smaller file."""
    (threads,) = conn.execute("SELECT current_setting('threads')").fetchone()
    conn.execute("SET threads = 1")
    try:
        yield conn
    finally:
        conn.execute(f"SET threads = {int(threads)}")


def _rollback(conn: duckdb.DuckDBPyConnection) -> None:
    """Roll back, keeping the error that got us here: a transaction DuckDB already ended
    has nothing to roll back, and closing the connection discards it anyway."""
    with suppress(duckdb.Error):
        conn.execute("ROLLBACK")


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
    # Read by DuckDB's replacement scan of this local name, not registered: a registered
    # frame is a temporary view, whose unregistering inside a transaction only takes effect
    # at commit, so each frame a transaction wrote stayed in memory until then (a whole
    # feature table, for one written in batches). Scanned as a polars LazyFrame: DuckDB
    # scans an Arrow table or a polars DataFrame through `pyarrow.dataset`, whose import
    # imports pandas (CPU spent in the first step of a process that writes a frame, e.g.
    # a backfill's first feature table); a LazyFrame without it.
    _frame_to_write = frame.lazy()
    if not append or not table_exists(conn, schema, table):
        conn.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM _frame_to_write")
        return
    incoming = conn.execute("DESCRIBE SELECT * FROM _frame_to_write").fetchall()
    _add_missing_columns(conn, schema, table, [(r[0], r[1]) for r in incoming])
    conn.execute(f"INSERT INTO {target} BY NAME SELECT * FROM _frame_to_write")


def write_frames(
    conn: duckdb.DuckDBPyConnection,
    schema: str,
    table: str,
    frames: Iterable[pl.DataFrame],
    *,
    append: bool,
) -> tuple[int, dict[str, pl.DataType]]:
    """Write consecutive frames into one table on the caller's transaction (a large
    output never held whole): the first replaces the table unless `append`, the others
    append. Returns the rows written and the first frame's schema."""
    rows, schema_written = 0, None
    for frame in frames:
        write_frame(conn, schema, table, frame, append=append or schema_written is not None)
        rows += frame.height
        schema_written = schema_written or dict(frame.schema)
    if schema_written is None:
        raise ValueError(f"no rows nor schema to write to {schema}.{table}")
    return rows, schema_written


def delete_partition_rows(
    conn: duckdb.DuckDBPyConnection, schema: str, table: str, column: str, keys: Sequence[str]
) -> None:
    """Deletes the rows whose `column` is one of the partition `keys`, if the table exists."""
    if table_exists(conn, schema, table):
        conn.execute(
            f'DELETE FROM "{schema}"."{table}" '
            f'WHERE list_contains({sql_text_list(keys)}, CAST("{column}" AS VARCHAR))'
        )


def replace_partition_rows(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    column: str,
    keys: Sequence[str],
    frames: Iterable[pl.DataFrame],
) -> tuple[int, dict[str, pl.DataType]]:
    """What an IO manager does for a partitioned output, for a writer of its own table:
    deletes the rows of `keys` (values of `column`), then appends `frames`, on the caller's
    transaction. Returns the rows written and their schema."""
    schema, name = table.split(".")
    delete_partition_rows(conn, schema, name, column, keys)
    return write_frames(conn, schema, name, frames, append=True)


def table_exists(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    """Whether `schema.table` exists in the connection's own catalog."""
    row = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() "
        f"AND table_schema = {sql_text(schema)} AND table_name = {sql_text(table)}"
    ).fetchone()
    return bool(row and row[0])


def _add_missing_columns(
    conn: duckdb.DuckDBPyConnection, schema: str, table: str, incoming: list[tuple[str, str]]
) -> None:
    """Adds the `incoming` (name, DuckDB type) columns that the table lacks, as nulls in
    the rows it has. By rewriting the table, not by ALTER TABLE: the caller has usually
    deleted the partition's rows in the same transaction, and DuckDB refuses to commit an
    ALTER TABLE after a DELETE from the table. Only when the schema grew, so rarely."""
    existing = {
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_catalog = "
            f"current_database() AND table_schema = {sql_text(schema)} "
            f"AND table_name = {sql_text(table)}"
        ).fetchall()
    }
    added = [
        f'NULL::{duck_type} AS "{name}"' for name, duck_type in incoming if name not in existing
    ]
    if added:
        target = f'"{schema}"."{table}"'
        conn.execute(
            f"CREATE OR REPLACE TABLE {target} AS SELECT *, {', '.join(added)} FROM {target}"
        )


def read_tables(
    conn: duckdb.DuckDBPyConnection,
    schema: str,
    tables: Iterable[str],
    *,
    columns: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, pl.DataFrame]:
    """Tables of one schema as polars frames (through Arrow, no copies per row): whole,
    or only the `columns` given for a table (a reader that needs few columns of large
    tables then holds only those)."""
    tables = list(tables)
    missing = [t for t in tables if not table_exists(conn, schema, t)]
    if missing:
        names = ", ".join(f"{schema}.{t}" for t in missing)
        raise WarehouseError(f"warehouse has no table {names}: materialize it first")
    columns = columns or {}

    def select(table: str) -> str:
        names = columns.get(table)
        return ", ".join(f'"{c}"' for c in names) if names else "*"

    return {t: conn.execute(f'SELECT {select(t)} FROM "{schema}"."{t}"').pl() for t in tables}


def count_duplicate_keys(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    key: Iterable[str],
    where: str = "TRUE",
) -> int:
    """How many key values occur more than once in `schema.table` (among the rows matching
    the SQL condition `where`, its values inlined: see `sql_text`).

    Counted first over one integer hash of the key (less time than grouping a date and a
    32-character seller id, on a large feature table), grouped in parallel (a DISTINCT
    count is not): equal keys hash alike, so no repeated hash means no duplicate; only
    when a hash repeats (a duplicate or a collision) are the keys themselves grouped."""
    columns = ", ".join(f'"{c}"' for c in key)
    repeated = conn.execute(
        f"SELECT count(*) FROM (SELECT hash({columns}) FROM {table} WHERE {where} "
        "GROUP BY ALL HAVING count(*) > 1)"
    ).fetchone()
    if not (repeated and repeated[0]):
        return 0
    row = conn.execute(
        f"SELECT count(*) FROM (SELECT {columns} FROM {table} WHERE {where} "
        "GROUP BY ALL HAVING count(*) > 1)"
    ).fetchone()
    return int(row[0]) if row else 0


def count_non_finite_rows(conn: duckdb.DuckDBPyConnection, table: str, where: str = "TRUE") -> int:
    """How many rows of `schema.table` (those matching the SQL condition `where`) hold a
    NaN or infinite value in a float column."""
    schema, name = table.split(".")
    floats = [
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_catalog = "
            f"current_database() AND table_schema = {sql_text(schema)} "
            f"AND table_name = {sql_text(name)} AND data_type IN ('DOUBLE', 'FLOAT')"
        ).fetchall()
    ]
    if not floats:
        return 0

    # A NaN or an infinity makes the row's sum of its floats non-finite (nulls count as
    # 0): one sum per row costs less than testing each column. Only when a sum is
    # non-finite (or overflows) is each column tested.
    def count(condition: str) -> int:
        row = conn.execute(f"SELECT count(*) FROM {table} WHERE ({where}) AND ({condition})")
        return int(row.fetchone()[0])

    total = " + ".join(f'coalesce("{c}", 0)' for c in floats)
    if not count(f"NOT isfinite({total})"):
        return 0
    return count(" OR ".join(f'NOT isfinite("{c}")' for c in floats))
