"""Loading a full as-of dump as the changes since the last load.

A daily snapshot is a full dump of the source, and nearly all of its rows are in the
warehouse already; typing them again (timestamps above all) and rewriting every table is
most of a reload's cost. So the hash of each record's bytes is kept beside the raw table,
keyed by the primary key (schema `ingest`, same transaction as the raw table). A record
whose hash is known is unchanged: it is, byte for byte, what was typed and checked when it
was loaded. A changed file is cut into records at the line breaks outside quotes and
hashed record by record without being parsed (`_plan_lines`); only the records whose hash
is not known are parsed, typed, checked row by row and compared by content with the
stored row; then new rows are inserted, changed rows replaced and rows no longer in the
source deleted. A file whose records do not parse one by one (a quote left open) or that
is mostly new is parsed whole and compared key and hash (`_plan_delta`), as are files of
a schema the store does not match yet.

The checks that need the whole source still hold for all of it: encoding, header, quoting
and field counts of the new lines (the known ones passed them before), unique keys over
every table (a repeat needs a new row's key on a known row, or a known line written
twice: both are looked up), and every reference between the final tables (new or changed
rows against their parents, rows left pointing at a deleted parent). A failed check
raises `InputDataError` before the caller commits, so nothing changes.

The hash only prunes: a record whose hash is not known (first load, another polars
version) is typed and compared by content, which costs time, never correctness. A 64-bit
collision between a new record and a stored one would hide that change: about one chance
in 2**64 per stored row for each changed row.

The SQL reads frames as local variables, by DuckDB's replacement scan (as
`lib.warehouse.write_frame` does), not registered: a frame registered inside the load's
transaction would stay in memory until its commit.

A file whose bytes are those of the file the table was last loaded from (same SHA-256,
kept in `ingest.source_files`) is not parsed at all: it changes nothing, and every check
it passed then still holds (the tables it references are checked against their own
changes as usual). A file with other bytes, even of the same size, is read as above.

A table is loaded whole (`full`) when asked, when it has no key (geolocation), or when
the warehouse has no table or hash store for it yet that matches the schema.

Each load also keeps the keys it inserted or updated (`ingest."<table>__changed"`) and
deleted (`ingest."<table>__deleted"`) for the raw tables' asset checks, which then look
at those rows only (`last_changes`); a table loaded whole has none, and is checked whole.

Each load also appends to `ingest.sale_changes` the sellers whose sales it may have
changed: the sellers of every order with an order or item row inserted, changed or deleted,
as the tables stood before the write and after it (an item can change seller), each with
the earliest purchase among those orders; a load that replaces orders or items whole
appends one row with no seller (every seller, from the start). The entries pile up until
the feature path reads and deletes them (`lib.features.incremental.catch_up`), so two loads
before one feature run are both seen, and a feature run that fails leaves them.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

from olist_churn_dagster.lib.ingest.loader import (
    HASH,
    LINE,
    ROW,
    InputDataError,
    check_references,
    orphan_error,
    parse_lines,
    parse_text,
    read_files,
    split_lines,
    type_rows,
    typed_key,
)
from olist_churn_dagster.lib.ingest.schema import REFERENCES, TABLES, TIMESTAMP, TableSpec
from olist_churn_dagster.lib.ingest.snapshots import fingerprint
from olist_churn_dagster.lib.tables import RAW_SCHEMA
from olist_churn_dagster.lib.warehouse import write_frame

HASH_SCHEMA = "ingest"
FILES_TABLE = "source_files"  # table name, SHA-256 and rows of the file last loaded
CHANGED, DELETED = "__changed", "__deleted"  # suffixes of the last load's key tables
SALE_CHANGES = "sale_changes"  # sellers whose sales the loads changed, until read
SALE_CHANGES_SCHEMA: dict[str, pl.DataType] = {
    "seller_id": pl.String(),  # null: the sale tables were replaced whole
    "first_purchase": TIMESTAMP,  # the earliest purchase among the seller's changed orders
}


@dataclass(frozen=True)
class TableChange:
    """What a load did to one raw table. A `full` load replaced the table: `inserted` is
    its new row count and `deleted` the previous one."""

    table: str
    mode: str
    rows: int
    inserted: int
    updated: int
    deleted: int
    unchanged_file: bool = False  # the same bytes as the last load's: not read at all

    def metadata(self) -> dict[str, int | str]:
        return {
            "load_mode": self.mode,
            "rows_inserted": self.inserted,
            "rows_updated": self.updated,
            "rows_deleted": self.deleted,
        }


@dataclass
class _TablePlan:
    spec: TableSpec
    mode: str
    keys: pl.DataFrame  # typed key, hash, ROW, LINE of every source row
    typed: pl.DataFrame  # the rows to write (all for full, new and changed for delta)
    hashes: pl.DataFrame  # key and hash of the rows whose stored hash is (re)written
    deleted: pl.DataFrame = field(default_factory=pl.DataFrame)  # keys (delta)
    updated: pl.DataFrame = field(default_factory=pl.DataFrame)  # keys (delta)
    inserted: int = 0
    previous_rows: int = 0
    sha256: str | None = None  # of the source file (None: the optional file is absent)
    unchanged_file: bool = False
    known: pl.DataFrame | None = None  # HASH, ROW, LINE of the rows not parsed (by lines)
    source_rows: int | None = None  # rows of the source (by lines: `keys` has only some)

    @property
    def rows(self) -> int:
        if self.unchanged_file:
            return self.previous_rows
        if self.source_rows is not None:
            return self.source_rows
        return self.typed.height if self.mode == "full" else self.keys.height

    @property
    def change(self) -> TableChange:
        if self.mode == "full":
            rows = self.typed.height
            return TableChange(self.spec.name, "full", rows, rows, 0, self.previous_rows)
        return TableChange(
            self.spec.name,
            "delta",
            self.rows,
            self.inserted,
            self.updated.height,
            self.deleted.height,
            self.unchanged_file,
        )


@dataclass
class LoadPlan:
    """A source compared with the warehouse: what `apply_load` will write. Nothing has been
    written yet, so the caller can look at the rows about to change first."""

    tables: dict[str, _TablePlan]

    @property
    def changes(self) -> dict[str, TableChange]:
        return {name: plan.change for name, plan in self.tables.items()}

    @property
    def full(self) -> bool:
        """Whether a table that sales hang off (orders, order_items) is replaced whole."""
        return any(self.tables[t].mode == "full" for t in ("orders", "order_items"))

    def touched_orders(self) -> pl.DataFrame:
        """Order ids with an order or item row inserted, changed or deleted (delta only)."""
        parts = []
        for name in ("orders", "order_items"):
            plan = self.tables[name]
            changed = plan.typed.select("order_id")
            parts += [changed, plan.deleted.select("order_id")]
        return pl.concat(parts).unique()


def _exists(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> list[tuple[str, str]]:
    """The (column, type) list of `schema.table`; empty when there is no such table."""
    return [
        (name, dtype)
        for name, dtype in conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            [schema, table],
        ).fetchall()
    ]


def _duck_types(frame: pl.DataFrame) -> list[tuple[str, str]]:
    con = duckdb.connect(":memory:")
    try:
        _empty = frame.head(0).to_arrow()
        return [(r[0], r[1]) for r in con.execute("DESCRIBE SELECT * FROM _empty").fetchall()]
    finally:
        con.close()


def _store_matches(conn: duckdb.DuckDBPyConnection, spec: TableSpec) -> bool:
    """Whether the raw table and its hash store (keyed tables) exist with the schema's
    columns and types."""
    raw = _exists(conn, RAW_SCHEMA, spec.name)
    expected = _duck_types(pl.DataFrame(schema=spec.schema))
    if not spec.primary_key:
        return raw == expected
    store = _exists(conn, HASH_SCHEMA, spec.name)
    keys = [c for c in expected if c[0] in spec.primary_key]
    return raw == expected and store == [*keys, (HASH, "UBIGINT")]


def _loaded_files(conn: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, int]]:
    """{table: (sha256, rows)} of the files the raw tables were last loaded from."""
    if not _exists(conn, HASH_SCHEMA, FILES_TABLE):
        return {}
    rows = conn.execute(
        f'SELECT table_name, sha256, "rows" FROM {HASH_SCHEMA}."{FILES_TABLE}"'
    ).fetchall()
    return {name: (digest, count) for name, digest, count in rows}


def loaded_fingerprint(conn: duckdb.DuckDBPyConnection) -> str | None:
    """The fingerprint of the files the raw tables were last loaded from (`snapshots.
    fingerprint` of their SHA-256s: a snapshot's own fingerprint once it is loaded), or
    None before any load. What a model trained on these tables was trained on."""
    files = _loaded_files(conn)
    return fingerprint({name: digest for name, (digest, _) in files.items()}) if files else None


def _key_schema(spec: TableSpec) -> dict[str, pl.DataType]:
    return {c: spec.schema[c] for c in spec.primary_key}


def _plan_unchanged(spec: TableSpec, sha256: str, rows: int) -> _TablePlan:
    """A file with the very bytes of the last load's: no row changes."""
    keys = _key_schema(spec)
    return _TablePlan(
        spec=spec,
        mode="delta",
        keys=pl.DataFrame(schema={**keys, HASH: pl.UInt64, ROW: pl.Int64, LINE: pl.Int64}),
        typed=pl.DataFrame(schema={**spec.schema, ROW: pl.Int64, LINE: pl.Int64}),
        hashes=pl.DataFrame(schema={**keys, HASH: pl.UInt64}),
        deleted=pl.DataFrame(schema=keys),
        updated=pl.DataFrame(schema=keys),
        previous_rows=rows,
        sha256=sha256,
        unchanged_file=True,
    )


def _check_unique(keys: pl.DataFrame, spec: TableSpec) -> None:
    """Unique keys over the whole table (new rows alone were checked by `type_rows`)."""
    pk = list(spec.primary_key)
    dupes = keys.filter(pl.struct(pk).is_duplicated())
    if dupes.is_empty():
        return
    first = dupes.sort(ROW).row(0, named=True)
    value = tuple(first[c] for c in pk)
    same = dupes.filter(pl.all_horizontal(pl.col(c) == first[c] for c in pk)).sort(ROW)
    rows = ", ".join(str(r) for r in same[ROW].head(5).to_list())
    raise InputDataError(
        f"duplicate primary key ({', '.join(pk)}) = {value!r} on rows {rows}; "
        f"{dupes.select(pk).n_unique()} key(s) repeat",
        file=spec.file_name,
        column=pk[0],
        row=first[ROW],
        line=first[LINE],
    )


def _on(pk: tuple[str, ...], left: str, right: str) -> str:
    return " AND ".join(f'{left}."{c}" = {right}."{c}"' for c in pk)


def _plan_delta(conn: duckdb.DuckDBPyConnection, spec: TableSpec, text: pl.DataFrame) -> _TablePlan:
    pk = list(spec.primary_key)
    keys = pl.concat([typed_key(text, spec.name), text.select(HASH, ROW, LINE)], how="horizontal")
    stored = conn.execute(f'SELECT * FROM {HASH_SCHEMA}."{spec.name}"').pl()
    fresh = keys.join(stored, on=[*pk, HASH], how="anti", nulls_equal=False)
    typed = type_rows(text.filter(pl.col(ROW).is_in(fresh.get_column(ROW).implode())), spec.name)
    _check_unique(keys, spec)
    deleted = stored.select(pk).join(keys.select(pk), on=pk, how="anti")
    return _compared(conn, spec, typed, keys, fresh.select(*pk, HASH), deleted)


def _compared(
    conn: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    typed: pl.DataFrame,
    keys: pl.DataFrame,
    hashes: pl.DataFrame,
    deleted: pl.DataFrame,
) -> _TablePlan:
    """The plan of a table loaded as changes: the rows not known by their hash (`typed`)
    compared by content with the stored rows, as updates or inserts."""
    pk = list(spec.primary_key)
    keys_sql = ", ".join(f'c."{c}"' for c in pk)
    differs = " OR ".join(f'c."{c}" IS DISTINCT FROM t."{c}"' for c in spec.columns)
    _fresh = typed.drop(ROW, LINE).to_arrow()
    found = f't."{pk[0]}" IS NOT NULL'  # a key column: never null in a stored row
    compared = conn.execute(
        f"SELECT {keys_sql}, {found} AS _found FROM _fresh c "
        f'LEFT JOIN {RAW_SCHEMA}."{spec.name}" t ON {_on(spec.primary_key, "c", "t")} '
        f"WHERE NOT {found} OR {differs}"
    ).pl()  # one scan of the table for both
    del _fresh
    updated = compared.filter(pl.col("_found")).drop("_found")
    inserted = compared.filter(~pl.col("_found")).drop("_found")
    to_write = pl.concat(
        [typed.join(updated, on=pk, how="semi"), typed.join(inserted.select(pk), on=pk, how="semi")]
    )
    return _TablePlan(
        spec=spec,
        mode="delta",
        keys=keys,
        typed=to_write,
        hashes=hashes,
        deleted=deleted,
        updated=updated,
        inserted=inserted.height,
    )


def _repeated(values: pl.Series) -> pl.Series:
    """The values that occur more than once, each once: by sorting, several times faster
    than `is_duplicated`'s hashing on the millions of hashes of a large file."""
    ordered = values.sort()
    return ordered.filter(ordered == ordered.shift(1)).unique()


def _plan_lines(conn: duckdb.DuckDBPyConnection, spec: TableSpec, data: bytes) -> _TablePlan | None:
    """A table loaded as changes without parsing the rows known by their hash: the file
    is cut into records (`split_lines`) and only the records whose hash the store does not
    hold are parsed, checked and typed. A known record is, byte for byte, a record read and
    checked before, so the file as a whole passes the checks when its new records do. None
    when the new records do not parse one by one (a quote left open), the file has no rows
    or most of its records are new: the caller reads the file whole then."""
    pk = list(spec.primary_key)
    header_end = data.find(b"\n") + 1
    lines = split_lines(data)
    if not header_end or lines.is_empty():
        return None
    store = f'{HASH_SCHEMA}."{spec.name}"'
    stored = conn.execute(f'SELECT "{HASH}" FROM {store}').pl().get_column(HASH)
    is_known = lines.get_column(HASH).is_in(stored.implode())
    if is_known.sum() < lines.height / 2:
        return None  # mostly new (first load, a changed hash): parsing it whole is cheaper
    new_lines = lines.filter(~is_known)
    try:
        text = parse_lines(data[:header_end], new_lines, spec)
    except InputDataError:
        return None
    typed = type_rows(text, spec.name)
    fresh = pl.concat([typed.select(pk), new_lines.select(HASH, ROW, LINE)], how="horizontal")
    known = lines.select(HASH, ROW, LINE).filter(is_known)
    # Keys can repeat only where a new row's key is also an unchanged row's, or where one
    # known line is written twice: those rows are located and checked with the new ones.
    twice = _repeated(known.get_column(HASH)).to_frame()
    key_list = ", ".join(f'"{c}"' for c in pk)
    _fresh_keys, _twice = fresh.select(pk).unique().to_arrow(), twice.to_arrow()
    involved = conn.execute(
        f"SELECT {key_list}, {HASH} FROM {store} SEMI JOIN _fresh_keys USING ({key_list}) "
        f"UNION SELECT {key_list}, {HASH} FROM {store} SEMI JOIN _twice USING ({HASH})"
    ).pl()
    del _fresh_keys, _twice
    keys = pl.concat([fresh, involved.join(known, on=HASH).select(fresh.columns)])
    _check_unique(keys, spec)
    # The stored hashes that are no line's any more: the old versions of changed rows and
    # the deleted rows, looked up by the few hashes rather than against every line's.
    _gone = stored.filter(~stored.is_in(lines.get_column(HASH).implode())).to_frame().to_arrow()
    gone = conn.execute(f"SELECT {key_list} FROM {store} SEMI JOIN _gone USING ({HASH})").pl()
    del _gone
    deleted = gone.join(fresh.select(pk), on=pk, how="anti", nulls_equal=False)
    plan = _compared(conn, spec, typed, keys, fresh.select(*pk, HASH), deleted)
    plan.known, plan.source_rows = known, lines.height
    return plan


def _plan_full(conn: duckdb.DuckDBPyConnection, spec: TableSpec, text: pl.DataFrame) -> _TablePlan:
    typed = type_rows(text, spec.name)
    hashes = text.select(HASH, ROW, LINE)
    keys = (
        pl.concat([typed.select(spec.primary_key), hashes], how="horizontal")
        if spec.primary_key
        else hashes
    )
    previous = 0
    if _exists(conn, RAW_SCHEMA, spec.name):
        previous = int(
            conn.execute(f'SELECT count(*) FROM {RAW_SCHEMA}."{spec.name}"').fetchone()[0]
        )
    return _TablePlan(
        spec=spec,
        mode="full",
        keys=keys,
        typed=typed,
        hashes=keys.select(*spec.primary_key, HASH),
        previous_rows=previous,
    )


def _sha256(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def _plan_table(
    conn: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    data: bytes | None,
    *,
    delta: bool,
    loaded: tuple[str, int] | None,
    digests: ThreadPoolExecutor,
) -> _TablePlan:
    """One table's plan: unchanged (the bytes of the last load), by lines, or read whole.
    The file's digest (about a second per GB, the GIL released) is taken in `digests`
    while the records are hashed; a file it finds unchanged drops that plan."""
    pending = digests.submit(_sha256, data)
    plan = _plan_lines(conn, spec, data) if delta and data is not None else None
    digest = pending.result()
    if digest is not None and loaded is not None and loaded[0] == digest:
        return _plan_unchanged(spec, digest, loaded[1])
    if plan is None:
        if data is None:
            columns = {c: pl.String for c in spec.columns}
            text = pl.DataFrame(schema={**columns, LINE: pl.Int64, ROW: pl.Int64, HASH: pl.UInt64})
        else:
            text = parse_text(data, spec, hashes=True)
        plan = (_plan_delta if delta else _plan_full)(conn, spec, text)
    plan.sha256 = digest
    return plan


def plan_load(conn: duckdb.DuckDBPyConnection, source: Path, *, full: bool) -> LoadPlan:
    """Read and check `source` and compare it with the warehouse's raw tables, table by
    table (`full`: every table loaded whole). Raises `InputDataError` for bad input."""
    usable = {n: not full and _store_matches(conn, s) for n, s in TABLES.items()}
    loaded = {n: f for n, f in _loaded_files(conn).items() if usable.get(n)}
    files = read_files(source)
    present: dict[str, bytes] = {}
    plans: dict[str, _TablePlan] = {}
    with ThreadPoolExecutor(1, thread_name_prefix="sha256") as digests:
        for name, spec in TABLES.items():
            # tables come in TABLES order; an optional file that is absent is an empty table
            while name not in present and (item := next(files, None)) is not None:
                present[item[0].name] = item[1]
            plans[name] = _plan_table(
                conn,
                spec,
                present.pop(name, None),
                delta=usable[name] and bool(spec.primary_key),
                loaded=loaded.get(name),
                digests=digests,
            )
    # Links between two tables loaded whole are checked on the frames, as `load_dataset`
    # does; the others once the changes are written (`apply_load`).
    check_references({n: p.typed for n, p in plans.items() if p.mode == "full"})
    return LoadPlan(plans)


def _write_delta(conn: duckdb.DuckDBPyConnection, plan: _TablePlan) -> None:
    if plan.unchanged_file:
        return
    spec, pk = plan.spec, plan.spec.primary_key
    raw, store = f'{RAW_SCHEMA}."{spec.name}"', f'{HASH_SCHEMA}."{spec.name}"'
    _gone = pl.concat([plan.deleted, plan.updated.select(pk)]).to_arrow()
    _rows, _hashes = plan.typed.drop(ROW, LINE).to_arrow(), plan.hashes.to_arrow()
    if _gone.num_rows:
        conn.execute(f"DELETE FROM {raw} t USING _gone g WHERE {_on(pk, 't', 'g')}")
    if _rows.num_rows:
        conn.execute(f"INSERT INTO {raw} BY NAME SELECT * FROM _rows")
    conn.execute(f"DELETE FROM {store} t USING _gone g WHERE {_on(pk, 't', 'g')}")
    conn.execute(f"DELETE FROM {store} t USING _hashes g WHERE {_on(pk, 't', 'g')}")
    conn.execute(f"INSERT INTO {store} BY NAME SELECT * FROM _hashes")


def _write_full(conn: duckdb.DuckDBPyConnection, plan: _TablePlan) -> None:
    spec = plan.spec
    write_frame(conn, RAW_SCHEMA, spec.name, plan.typed.drop(ROW, LINE))
    if spec.primary_key:
        write_frame(conn, HASH_SCHEMA, spec.name, plan.hashes)
    else:
        conn.execute(f'DROP TABLE IF EXISTS {HASH_SCHEMA}."{spec.name}"')


def _columns(spec: TableSpec, column: str) -> str:
    names = dict.fromkeys([*spec.primary_key, column])
    return ", ".join(f'c."{c}"' for c in names)


def _orphans(
    conn: duckdb.DuckDBPyConnection, child: _TablePlan, column: str, parent: _TablePlan, pcol: str
) -> pl.DataFrame:
    """Keys of the final child rows whose `column` points at no row of the final parent.
    When both were loaded as changes, only the child's new rows and the rows pointing at a
    parent row deleted by this load can be such rows; otherwise all are looked at."""
    spec, parent_table = child.spec, f'{RAW_SCHEMA}."{parent.spec.name}"'
    select = f"SELECT {_columns(spec, column)}"
    orphan = (
        f'c."{column}" IS NOT NULL AND c."{column}" NOT IN (SELECT "{pcol}" FROM {parent_table})'
    )
    if child.mode == "full" or parent.mode == "full":
        return conn.execute(f'{select} FROM {RAW_SCHEMA}."{spec.name}" c WHERE {orphan}').pl()
    _new = child.typed.drop(ROW, LINE).to_arrow()
    bad = conn.execute(f"{select} FROM _new c WHERE {orphan}").pl()
    del _new
    if parent.deleted.height:
        _gone = parent.deleted.select(pl.col(pcol).alias("__key")).to_arrow()
        left = conn.execute(
            f'{select} FROM {RAW_SCHEMA}."{spec.name}" c '
            f'SEMI JOIN _gone g ON c."{column}" = g.__key'
        ).pl()
        bad = pl.concat([bad, left]).unique(maintain_order=True)
    return bad


def _locate_known(
    conn: duckdb.DuckDBPyConnection, plan: _TablePlan, located: pl.DataFrame
) -> pl.DataFrame:
    """Row and line of rows that were not parsed, found by their stored hash."""
    pk = list(plan.spec.primary_key)
    key_list = ", ".join(f'"{c}"' for c in pk)
    _bad = located.filter(pl.col(ROW).is_null()).select(pk).to_arrow()
    hashed = conn.execute(
        f'SELECT {key_list}, {HASH} FROM {HASH_SCHEMA}."{plan.spec.name}" '
        f"SEMI JOIN _bad USING ({key_list})"
    ).pl()
    found = hashed.join(plan.known, on=HASH).drop(HASH).unique(pk, keep="first")
    return located.join(found, on=pk, how="left", suffix="_known").with_columns(
        pl.coalesce(ROW, f"{ROW}_known").alias(ROW), pl.coalesce(LINE, f"{LINE}_known").alias(LINE)
    )


def _check_links(conn: duckdb.DuckDBPyConnection, plans: dict[str, _TablePlan]) -> None:
    """Every reference between the final tables holds; the first broken one is raised with
    the child row's file, row and line."""
    for child, column, parent, pcol in REFERENCES:
        child_plan, parent_plan = plans[child], plans[parent]
        if child_plan.mode == "full" and parent_plan.mode == "full":
            continue  # checked on the frames before writing, as `load_dataset` does
        bad = _orphans(conn, child_plan, column, parent_plan, pcol)
        if bad.is_empty():
            continue
        pk = list(child_plan.spec.primary_key)
        located = bad.join(child_plan.keys.select(*pk, ROW, LINE), on=pk, how="left")
        if child_plan.known is not None and located[ROW].null_count():
            located = _locate_known(conn, child_plan, located)
        first = located.sort(ROW, nulls_last=True).row(0, named=True)
        raise orphan_error(child, column, parent, bad.height, first)


def _write_changed_keys(conn: duckdb.DuckDBPyConnection, plan: _TablePlan) -> None:
    """Keep the keys this load inserted or updated, and those it deleted, for the asset
    checks (`last_changes`); none for a table loaded whole (its checks read it all)."""
    name, pk = plan.spec.name, list(plan.spec.primary_key)
    changed, deleted = f'{HASH_SCHEMA}."{name}{CHANGED}"', f'{HASH_SCHEMA}."{name}{DELETED}"'
    if plan.mode == "full" or not pk:
        conn.execute(f"DROP TABLE IF EXISTS {changed}")
        conn.execute(f"DROP TABLE IF EXISTS {deleted}")
        return
    write_frame(conn, HASH_SCHEMA, f"{name}{CHANGED}", plan.typed.select(pk))
    write_frame(conn, HASH_SCHEMA, f"{name}{DELETED}", plan.deleted.select(pk))


def _write_files(conn: duckdb.DuckDBPyConnection, plans: dict[str, _TablePlan]) -> None:
    files = pl.DataFrame(
        [(n, p.sha256, p.rows) for n, p in plans.items() if p.sha256 is not None],
        schema={"table_name": pl.String, "sha256": pl.String, "rows": pl.Int64},
        orient="row",
    )
    write_frame(conn, HASH_SCHEMA, FILES_TABLE, files)


def last_changes(conn: duckdb.DuckDBPyConnection, table: str) -> tuple[str, str] | None:
    """The tables holding the keys the last load of raw `table` inserted or updated, and
    those it deleted; None when it was loaded whole (or has no key): look at every row.
    The load refused any source that broke a key or a reference, so after a load of
    changes a broken one can only involve these rows."""
    changed, deleted = f"{table}{CHANGED}", f"{table}{DELETED}"
    if not (_exists(conn, HASH_SCHEMA, changed) and _exists(conn, HASH_SCHEMA, deleted)):
        return None
    return f'{HASH_SCHEMA}."{changed}"', f'{HASH_SCHEMA}."{deleted}"'


def _sale_sellers(conn: duckdb.DuckDBPyConnection, orders: pl.DataFrame) -> pl.DataFrame:
    """The sellers of these orders' items as the raw tables stand, each with the earliest
    purchase among those orders (`SALE_CHANGES_SCHEMA`)."""
    _orders = orders.select("order_id").to_arrow()
    return conn.execute(
        f"SELECT i.seller_id, min(o.order_purchase_timestamp) AS first_purchase "
        f"FROM {RAW_SCHEMA}.order_items i JOIN {RAW_SCHEMA}.orders o USING (order_id) "
        "SEMI JOIN _orders USING (order_id) GROUP BY i.seller_id"
    ).pl()


def _log_sale_changes(conn: duckdb.DuckDBPyConnection, sellers: pl.DataFrame | None) -> None:
    """Append the sellers whose sales a load changed (None: replaced whole) to the log."""
    if sellers is None:
        rows = pl.DataFrame({"seller_id": [None], "first_purchase": [None]})
    else:
        rows = sellers.group_by("seller_id").agg(pl.col("first_purchase").min())
    if not rows.is_empty():
        rows = rows.select(pl.col(c).cast(t) for c, t in SALE_CHANGES_SCHEMA.items())
        write_frame(conn, HASH_SCHEMA, SALE_CHANGES, rows, append=True)


def apply_load(conn: duckdb.DuckDBPyConnection, plan: LoadPlan) -> dict[str, TableChange]:
    """Write the planned changes (the caller's transaction), then check every reference
    between the final tables; `InputDataError` if one is broken (roll back then). The
    sellers whose sales changed are logged (`SALE_CHANGES`), looked up before and after
    the write."""
    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{RAW_SCHEMA}"')
    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{HASH_SCHEMA}"')
    touched = None if plan.full else plan.touched_orders()
    before = None if touched is None else _sale_sellers(conn, touched)
    for table_plan in plan.tables.values():
        (_write_full if table_plan.mode == "full" else _write_delta)(conn, table_plan)
        _write_changed_keys(conn, table_plan)
    _check_links(conn, plan.tables)
    _write_files(conn, plan.tables)
    if touched is None:
        _log_sale_changes(conn, None)
    else:
        _log_sale_changes(conn, pl.concat([before, _sale_sellers(conn, touched)]))
    return plan.changes
