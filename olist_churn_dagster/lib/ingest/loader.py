"""Read and validate the nine Olist CSV tables from a folder or the Kaggle zip.

Every column is read as text first and then cast, so nothing is guessed (zip prefixes
keep their leading zeros) and a bad value is reported with its file, column, row and
line instead of a bare parser error. `load_dataset` returns only when every table and
every cross-table reference is valid, so a caller that writes its result writes nothing
from a bad source.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from olist_churn_dagster.lib.ingest.schema import (
    ORDER_STATUSES,
    REFERENCES,
    REQUIRED_TABLES,
    TABLES,
    TIMESTAMP,
    TIMESTAMP_FORMAT,
    TableSpec,
)

# A single field larger than this is refused: no Olist column comes near it, and such a
# field is nearly always a broken quote that swallowed the rest of the file.
MAX_FIELD_BYTES = 1 << 20
# Event timestamps later than now + this are refused (dates are naive local times).
FUTURE_TOLERANCE = timedelta(days=1)
# Promises and deadlines lie in the future by nature; they are not event timestamps.
FUTURE_ALLOWED = frozenset({"order_estimated_delivery_date", "shipping_limit_date"})

# Columns that must hold a value even though they are not part of the primary key.
NOT_NULL: dict[str, tuple[str, ...]] = {
    "orders": ("customer_id", "order_status", "order_purchase_timestamp"),
    "order_items": ("product_id", "seller_id", "price", "freight_value"),
    "order_payments": ("payment_value",),
    "order_reviews": ("review_score",),
}
NON_NEGATIVE: dict[str, tuple[str, ...]] = {
    "order_items": ("price", "freight_value"),
    "order_payments": ("payment_installments", "payment_value"),
    "products": (
        "product_name_lenght",
        "product_description_lenght",
        "product_photos_qty",
        "product_weight_g",
        "product_length_cm",
        "product_height_cm",
        "product_width_cm",
    ),
}
_ROW = "__row"  # 1-based data row (header and blank lines excluded)
_LINE = "__line"  # physical line in the file where the row starts
ROW, LINE = _ROW, _LINE  # the same, for callers of `parse_text` and `type_rows`
HASH = "row_hash"
_HASH_SEED = 20_181_017  # any fixed seed: the same bytes must give the same hash each load
_QUOTE, _COMMA, _NEWLINE, _CR = 34, 44, 10, 13
_DUPLICATE_HEADER = re.compile(r"^(.*)_duplicated_\d+$")
_POLARS_BAD_FIELD = re.compile(r"could not parse `(.{1,200}?)` as dtype", re.DOTALL)


class InputDataError(ValueError):
    """Bad input: the message names the file, and where known the column, the row (1-based
    data row, header excluded, or the line number) and what was expected."""

    def __init__(
        self,
        detail: str,
        *,
        file: str | None = None,
        column: str | None = None,
        row: int | None = None,
        line: int | None = None,
    ) -> None:
        self.file = file
        self.column = column
        self.row = row
        self.line = line
        where = [file] if file else []
        if column:
            where.append(f"column '{column}'")
        if row is not None:
            where.append(f"row {row}" + (f" (line {line})" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        super().__init__(f"{', '.join(where)}: {detail}" if where else detail)


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Source:
    """A folder of CSV files or a zip holding them (at top level or in a sub-folder)."""

    path: Path
    members: dict[str, str] | None = None  # file name -> zip member; None for a folder

    @classmethod
    def open(cls, source: Path) -> _Source:
        path = resolve_source(source)
        if path.is_dir():
            return cls(path)
        return cls(path, _zip_members(path))

    def has(self, file_name: str) -> bool:
        if self.members is None:
            return (self.path / file_name).is_file()
        return file_name in self.members

    def read(self, file_name: str) -> bytes:
        if not self.has(file_name):
            kind = "folder" if self.members is None else "zip"
            raise InputDataError(
                f"file not found: expected '{file_name}' in {kind} {self.path}", file=file_name
            )
        if self.members is None:
            return (self.path / file_name).read_bytes()
        try:
            with zipfile.ZipFile(self.path) as archive:
                return archive.read(self.members[file_name])
        except (zipfile.BadZipFile, OSError, NotImplementedError) as exc:
            raise InputDataError(f"cannot read it from {self.path}: {exc}", file=file_name) from exc

    def polars_source(self, file_name: str) -> Path | bytes:
        """A path polars can map directly when there is one, else the member's bytes."""
        return self.path / file_name if self.members is None else self.read(file_name)


def _zip_members(path: Path) -> dict[str, str]:
    """Map each expected file name to its member, wherever it sits inside the zip."""
    wanted = {spec.file_name for spec in TABLES.values()}
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.startswith("__MACOSX/")]
    except zipfile.BadZipFile as exc:
        raise InputDataError(f"not a readable zip file: {exc}", file=path.name) from exc
    members: dict[str, str] = {}
    for name in names:
        base = name.rsplit("/", 1)[-1]
        if base not in wanted:
            continue
        if base in members:
            raise InputDataError(
                f"the zip {path} holds '{base}' twice ('{members[base]}' and '{name}')",
                file=base,
            )
        members[base] = name
    return members


def resolve_source(source: Path) -> Path:
    """The folder or zip to read: a folder with the CSVs, a .zip file, or a folder that
    holds exactly one zip (the Kaggle download dropped as is)."""
    source = Path(source)
    if not source.exists():
        raise InputDataError(f"source not found: {source}")
    if source.is_file():
        if zipfile.is_zipfile(source):
            return source
        raise InputDataError(
            f"expected a folder of Olist CSV files or a .zip file, got {source}",
            file=source.name,
        )
    if any((source / spec.file_name).is_file() for spec in TABLES.values()):
        return source
    zips = sorted(p for p in source.glob("*.zip") if p.is_file())
    if len(zips) == 1:
        return zips[0]
    if len(zips) > 1:
        names = ", ".join(p.name for p in zips)
        raise InputDataError(f"{source} holds several zip files ({names}); keep exactly one")
    raise InputDataError(
        f"{source} holds neither the Olist CSV files (e.g. '{TABLES['orders'].file_name}') "
        "nor a zip of them"
    )


# --------------------------------------------------------------------------- bytes level


def _check_utf8(data: bytes, file_name: str) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputDataError(
            f"not valid UTF-8: byte 0x{data[exc.start]:02x} at byte offset {exc.start}; "
            "save the file as UTF-8",
            file=file_name,
            line=line,
        ) from exc


@dataclass(frozen=True)
class _Layout:
    """Where each data record starts (line) and whether it is a blank line."""

    lines: np.ndarray  # physical line number of each data record (header excluded)
    blank: np.ndarray  # True for an empty line, which is skipped
    starts: np.ndarray  # byte offset of each data record


def _scan_layout(data: bytes, columns: list[str], file_name: str) -> _Layout:
    """Split the bytes into records and fields the way RFC 4180 does, vectorised.

    A comma or newline is structural when an even number of quotes precede it. This
    finds unterminated quotes, rows with the wrong number of fields (which the CSV
    parser would silently pad) and oversized fields, each with its line number.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    quotes = np.flatnonzero(buf == _QUOTE)
    newlines = np.flatnonzero(buf == _NEWLINE)

    def line_of(offset: int) -> int:
        return int(np.searchsorted(newlines, offset)) + 1

    if len(quotes) % 2:
        raise InputDataError(
            "a quoted field is never closed (odd number of '\"' characters); the last quote "
            "is here, the open one may be earlier. Is the file cut short?",
            file=file_name,
            line=line_of(int(quotes[-1])),
        )
    commas = np.flatnonzero(buf == _COMMA)
    ends = newlines
    if len(quotes):  # without quotes every comma and newline is structural
        ends = newlines[np.searchsorted(quotes, newlines) % 2 == 0]
        commas = commas[np.searchsorted(quotes, commas) % 2 == 0]
    if len(buf) and buf[-1] != _NEWLINE:
        ends = np.append(ends, len(buf))
    starts = np.concatenate(([0], ends[:-1] + 1))
    fields = np.diff(np.searchsorted(commas, ends), prepend=0) + 1
    has_cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == _CR)
    blank = (ends - starts - has_cr) == 0
    if len(ends) == len(newlines) + (len(buf) > 0 and buf[-1] != _NEWLINE):
        lines = np.arange(1, len(ends) + 1)  # no newline inside a quoted field
    else:
        lines = np.searchsorted(newlines, starts) + 1

    _check_field_sizes(ends, commas, starts, columns, file_name, line_of)
    data_fields, data_blank, data_lines = fields[1:], blank[1:], lines[1:]
    wrong = np.flatnonzero((data_fields != len(columns)) & ~data_blank)
    if len(wrong):
        first = int(wrong[0])
        row = int(first - data_blank[:first].sum()) + 1
        last_hint = " (the last line looks cut short)" if first == len(data_fields) - 1 else ""
        raise InputDataError(
            f"found {int(data_fields[first])} fields, expected {len(columns)} "
            f"({', '.join(columns)}){last_hint}; {len(wrong)} row(s) have a wrong field count",
            file=file_name,
            row=row,
            line=int(data_lines[first]),
        )
    return _Layout(lines=data_lines, blank=data_blank, starts=starts[1:])


def _check_field_sizes(
    ends: np.ndarray,
    commas: np.ndarray,
    starts: np.ndarray,
    columns: list[str],
    file_name: str,
    line_of: Callable[[int], int],
) -> None:
    """Refuse a field over MAX_FIELD_BYTES; only records that long are looked into."""
    long = np.flatnonzero(ends - starts > MAX_FIELD_BYTES)
    if not len(long):
        return
    inside = np.isin(np.searchsorted(ends, commas), long)
    points = np.concatenate((starts[long] - 1, commas[inside], ends[long]))
    is_end = np.concatenate((np.zeros(len(points) - len(long), bool), np.ones(len(long), bool)))
    order = np.argsort(points, kind="stable")
    points, is_end = points[order], is_end[order]
    sizes = np.where(is_end[:-1], -1, np.diff(points) - 1)
    biggest = int(np.argmax(sizes))
    if sizes[biggest] <= MAX_FIELD_BYTES:
        return
    end = int(points[biggest + 1])
    record = int(np.searchsorted(ends, end))
    index = int(np.searchsorted(commas, end) - np.searchsorted(commas, starts[record]))
    column = columns[index] if record > 0 and index < len(columns) else None
    raise InputDataError(
        f"a field of {int(sizes[biggest]):,} bytes exceeds the limit of {MAX_FIELD_BYTES:,} "
        "bytes; is a quote left open?",
        file=file_name,
        column=column,
        line=line_of(int(starts[record])),
    )


# --------------------------------------------------------------------------- parsing


def _polars_error(exc: Exception, data: bytes, file_name: str) -> InputDataError:
    """Re-raise a CSV parser failure with the file name and, if it can be found, a line."""
    message = str(exc).split("\n\n", 1)[0].strip()
    match = _POLARS_BAD_FIELD.search(str(exc))
    line = None
    if match:
        offset = data.find(match.group(1).encode("utf-8", "replace"))
        line = data.count(b"\n", 0, offset) + 1 if offset >= 0 else None
    return InputDataError(f"malformed CSV: {message}", file=file_name, line=line)


def _read_header(data: bytes, spec: TableSpec) -> list[str]:
    try:
        columns = pl.read_csv(data, n_rows=0, infer_schema=False).columns
    except pl.exceptions.PolarsError as exc:
        raise _polars_error(exc, data, spec.file_name) from exc
    duplicated = sorted({m.group(1) for c in columns if (m := _DUPLICATE_HEADER.match(c))})
    if duplicated:
        raise InputDataError(
            f"column(s) {_names(duplicated)} appear more than once in the header",
            file=spec.file_name,
            column=duplicated[0],
            line=1,
        )
    expected = list(spec.columns)
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in spec.columns]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {_names(missing)}")
        if extra:
            parts.append(f"unexpected column(s) {_names(extra)}")
        hint = " (renamed?)" if missing and extra else ""
        raise InputDataError(
            f"{'; '.join(parts)}{hint}; expected exactly: {', '.join(expected)}",
            file=spec.file_name,
            column=(missing or extra)[0],
            line=1,
        )
    return columns


def _slices(data: bytes, starts: np.ndarray) -> pl.Series:
    """The bytes from each start to the next (the last to the end), without copying."""
    offsets = np.append(starts, len(data)).astype(np.int64)
    array = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(starts), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    return pl.Series(array)


def record_hash(records: pl.Series) -> pl.Series:
    """The hash of each record's bytes (its line end included), as `lib.ingest.delta`
    keeps it: equal bytes, equal hash."""
    return records.hash(seed=_HASH_SEED).alias(HASH)


def _read_strings(
    data: bytes, spec: TableSpec, columns: list[str], *, hashes: bool = False
) -> pl.DataFrame:
    """All fields as text, blank lines dropped, row and line numbers attached (and with
    `hashes` each record's `record_hash`)."""
    layout = _scan_layout(data, columns, spec.file_name)
    try:
        raw = pl.read_csv(
            data,
            infer_schema=False,
            truncate_ragged_lines=False,
            raise_if_empty=True,
            quote_char='"',
        )
    except pl.exceptions.PolarsError as exc:
        raise _polars_error(exc, data, spec.file_name) from exc
    if raw.height != len(layout.lines):
        raise InputDataError(
            f"malformed CSV: parsed {raw.height} rows but the file has {len(layout.lines)} "
            "records; check the quoting",
            file=spec.file_name,
        )
    raw = raw.with_columns(pl.Series(_LINE, layout.lines, dtype=pl.Int64))
    if hashes:
        raw = raw.with_columns(record_hash(_slices(data, layout.starts)))
    if layout.blank.any():
        raw = raw.filter(pl.Series(~layout.blank))
    return raw.with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(_ROW))


def _names(columns: Iterable[str]) -> str:
    return ", ".join(f"'{c}'" for c in columns)


def _short(value: object, limit: int = 80) -> str:
    """A value for a message: strings quoted, long ones cut."""
    text = repr(value) if isinstance(value, str | tuple) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- casting


def _cast_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    """Text -> dtype, yielding null where the text is not a valid value of the type."""
    text = pl.col(name)
    if dtype == TIMESTAMP:
        full = text.str.to_datetime(TIMESTAMP_FORMAT, strict=False, time_unit="us")
        day = text.str.to_date("%Y-%m-%d", strict=False).cast(TIMESTAMP)
        return pl.coalesce(full, day).alias(name)
    number = text.cast(pl.Float64, strict=False)
    if dtype == pl.Int64:
        # Some copies write integers as `40.0`: accept integral floats, refuse `40.5`.
        integral = number.is_finite() & (number == number.round(0)) & (number.abs() < 2**53)
        as_int = pl.when(integral).then(number).cast(pl.Int64)
        return pl.coalesce(text.cast(pl.Int64, strict=False), as_int).alias(name)
    if dtype == pl.Float64:
        return pl.when(number.is_finite()).then(number).alias(name)
    return pl.col(name).cast(dtype).alias(name)


def _describe(dtype: pl.DataType) -> str:
    if dtype == TIMESTAMP:
        return "a timestamp YYYY-MM-DD HH:MM:SS (or a date YYYY-MM-DD)"
    if dtype == pl.Int64:
        return "an integer"
    if dtype == pl.Float64:
        return "a finite number with '.' as decimal point"
    return str(dtype)


def _cast_table(raw: pl.DataFrame, spec: TableSpec) -> pl.DataFrame:
    """Cast every column per the schema; the first bad value of a column is an error."""
    typed = raw.select(
        *(
            pl.col(c) if dtype == pl.String else _cast_expr(c, dtype)
            for c, dtype in spec.columns.items()
        ),
        _ROW,
        _LINE,
    )
    for column, dtype in spec.columns.items():
        if dtype == pl.String or typed[column].null_count() == raw[column].null_count():
            continue
        bad = raw.filter(pl.col(column).is_not_null() & typed[column].is_null())
        first = bad.row(0, named=True)
        raise InputDataError(
            f"expected {_describe(dtype)}, found {_short(first[column])} "
            f"({bad.height} bad value(s) in this column)",
            file=spec.file_name,
            column=column,
            row=first[_ROW],
            line=first[_LINE],
        )
    return typed


# --------------------------------------------------------------------------- row rules


def _fail_where(df: pl.DataFrame, spec: TableSpec, column: str, mask: pl.Expr, what: str) -> None:
    """Raise for the first row matching `mask`, naming its value and the count."""
    bad = df.filter(mask)
    if bad.is_empty():
        return
    first = bad.row(0, named=True)
    found = "it is empty" if first[column] is None else f"found {_short(first[column])}"
    raise InputDataError(
        f"{what}, {found} ({bad.height} row(s) affected)",
        file=spec.file_name,
        column=column,
        row=first[_ROW],
        line=first[_LINE],
    )


def _check_keys(df: pl.DataFrame, spec: TableSpec) -> None:
    for column in (*spec.primary_key, *NOT_NULL.get(spec.name, ())):
        _fail_where(df, spec, column, pl.col(column).is_null(), "expected a value")
    if not spec.primary_key:
        return
    key = pl.struct(spec.primary_key)
    dupes = df.filter(key.is_duplicated())
    if dupes.is_empty():
        return
    first = dupes.row(0, named=True)
    value = {c: first[c] for c in spec.primary_key}
    same = dupes.filter(pl.all_horizontal(pl.col(c) == v for c, v in value.items()))
    rows = ", ".join(str(r) for r in same[_ROW].head(5).to_list())
    n_keys = dupes.select(spec.primary_key).n_unique()
    raise InputDataError(
        f"duplicate primary key ({', '.join(spec.primary_key)}) = {_short(tuple(value.values()))} "
        f"on rows {rows}; {n_keys} key(s) repeat",
        file=spec.file_name,
        column=spec.primary_key[0],
        row=first[_ROW],
        line=first[_LINE],
    )


def _check_values(df: pl.DataFrame, spec: TableSpec, now: datetime) -> None:
    if spec.name == "orders":
        status = pl.col("order_status")
        allowed = ", ".join(ORDER_STATUSES)
        _fail_where(
            df, spec, "order_status", ~status.is_in(ORDER_STATUSES), f"expected one of {allowed}"
        )
        _check_delivery(df, spec)
    if spec.name == "order_reviews":
        score = pl.col("review_score")
        _fail_where(
            df, spec, "review_score", ~score.is_between(1, 5), "expected a review score from 1 to 5"
        )
    for column in NON_NEGATIVE.get(spec.name, ()):
        _fail_where(df, spec, column, pl.col(column) < 0, "expected a value >= 0")
    limit = now + FUTURE_TOLERANCE
    for column in spec.timestamp_columns:
        if column not in FUTURE_ALLOWED:
            _fail_where(
                df,
                spec,
                column,
                pl.col(column) > limit,
                f"timestamp in the future (after {limit:%Y-%m-%d %H:%M:%S})",
            )


def _check_delivery(df: pl.DataFrame, spec: TableSpec) -> None:
    early = pl.col("order_delivered_customer_date") < pl.col("order_purchase_timestamp")
    bad = df.filter(early)
    if bad.is_empty():
        return
    first = bad.row(0, named=True)
    raise InputDataError(
        f"order {first['order_id']!r} is delivered to the customer "
        f"({first['order_delivered_customer_date']}) before it was purchased "
        f"({first['order_purchase_timestamp']}); {bad.height} order(s) affected",
        file=spec.file_name,
        column="order_delivered_customer_date",
        row=first[_ROW],
        line=first[_LINE],
    )


def _check_references(frames: dict[str, pl.DataFrame]) -> None:
    for child, column, parent, parent_column in REFERENCES:
        if child not in frames or parent not in frames:
            continue
        known = frames[parent].get_column(parent_column).implode()
        orphans = frames[child].filter(pl.col(column).is_not_null() & ~pl.col(column).is_in(known))
        if orphans.is_empty():
            continue
        raise orphan_error(child, column, parent, orphans.height, orphans.row(0, named=True))


def orphan_error(
    child: str, column: str, parent: str, count: int, first: dict[str, object]
) -> InputDataError:
    """`count` rows of `child` whose `column` names no row of `parent`; `first` (with its
    row and line) is the one the message shows."""
    return InputDataError(
        f"{count} row(s) point at {parent} unknown to "
        f"{TABLES[parent].file_name}, e.g. {column} {first[column]!r}",
        file=TABLES[child].file_name,
        column=column,
        row=first[_ROW],
        line=first[_LINE],
    )


def _now() -> datetime:
    return datetime.now()


# --------------------------------------------------------------------------- public API


def parse_text(data: bytes, spec: TableSpec, *, hashes: bool = False) -> pl.DataFrame:
    """One file's rows as text, after the whole-file checks (encoding, header, quoting,
    field counts), with `ROW` and `LINE` (with `hashes`, a `HASH` column too)."""
    if not data:
        raise InputDataError(
            f"the file is empty (0 bytes); expected a header: {', '.join(spec.columns)}",
            file=spec.file_name,
        )
    _check_utf8(data, spec.file_name)
    columns = _read_header(data, spec)
    raw = _read_strings(data, spec, columns, hashes=hashes)
    if raw.is_empty() and spec.required:
        raise InputDataError("the file has a header but no data rows", file=spec.file_name)
    return raw


def type_rows(text: pl.DataFrame, name: str) -> pl.DataFrame:
    """Rows read as text (`parse_text`) typed per the schema and checked row by row
    (types, keys, values), still carrying `ROW` and `LINE`. Keys are unique among these
    rows only: a caller typing part of a table checks the rest itself."""
    spec = _spec(name)
    typed = _cast_table(text, spec)
    _check_keys(typed, spec)
    _check_values(typed, spec, _now())
    return typed


def typed_key(text: pl.DataFrame, name: str) -> pl.DataFrame:
    """The primary key columns of text rows, typed (null where a value does not parse):
    cheap, since keys are ids and small integers, never timestamps."""
    spec = _spec(name)
    return text.select(_cast_expr(c, spec.columns[c]) for c in spec.primary_key)


def _read_checked(source: _Source, spec: TableSpec) -> pl.DataFrame:
    """One table, typed and checked, still carrying its row and line numbers."""
    return type_rows(parse_text(source.read(spec.file_name), spec), spec.name)


def _spec(name: str) -> TableSpec:
    if name not in TABLES:
        raise KeyError(f"unknown table {name!r}; expected one of {', '.join(TABLES)}")
    return TABLES[name]


def _table_specs(src: _Source, tables: Iterable[str] | None) -> list[TableSpec]:
    """The tables to read (all required ones plus geolocation when present, or those
    named), every file checked to be there."""
    if tables is None:
        names = list(REQUIRED_TABLES)
        names += [n for n, s in TABLES.items() if not s.required and src.has(s.file_name)]
    else:
        names = list(dict.fromkeys(tables))
    specs = [_spec(name) for name in names]
    missing = [s.file_name for s in specs if not src.has(s.file_name)]
    if missing:
        kind = "folder" if src.members is None else "zip"
        raise InputDataError(
            f"file(s) not found in {kind} {src.path}: {', '.join(missing)}",
            file=missing[0],
        )
    return specs


def load_dataset(
    source: Path,
    *,
    tables: Iterable[str] | None = None,
    check_references: bool = True,
) -> dict[str, pl.DataFrame]:
    """All required tables (plus geolocation when its file is present), or those named.

    Returns only when every table and, with `check_references`, every link between them
    is valid, so a caller writes nothing from a bad source.
    """
    src = _Source.open(source)
    frames = {spec.name: _read_checked(src, spec) for spec in _table_specs(src, tables)}
    if check_references:
        _check_references(frames)
    return {name: df.drop(_ROW, _LINE) for name, df in frames.items()}


def read_files(source: Path) -> Iterator[tuple[TableSpec, bytes]]:
    """The bytes of every file of the source (as `load_dataset` picks them), one at a
    time; every file is checked to be there before the first is read."""
    src = _Source.open(source)
    for spec in _table_specs(src, None):
        yield spec, src.read(spec.file_name)


def _positions(buf: np.ndarray, byte: int, chunk: int = 1 << 22) -> np.ndarray:
    """Offsets of `byte` in `buf`, found a few MB at a time: a mask of the whole buffer
    (as large as the file) costs more in fresh pages than the comparison itself."""
    found = [np.flatnonzero(buf[i : i + chunk] == byte) + i for i in range(0, len(buf), chunk)]
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def split_lines(data: bytes) -> pl.DataFrame:
    """Every record after the header: `LINE` (the physical line it starts on), its bytes
    (`record`, line end included) and `record_hash`; blank lines left out. Records end at
    the line breaks outside quotes, as `_scan_layout` cuts them, so a record whose quoted
    field holds a line break (review comments do) is one record here too, with the hash a
    whole read gives it. With an odd number of quotes the last record runs to the end of
    the file and does not parse (the caller then reads the file whole, which says where)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = _positions(buf, _NEWLINE)
    if b'"' in data:
        quotes = _positions(buf, _QUOTE)
        newlines_outside = np.searchsorted(quotes, newlines) % 2 == 0
        ends = newlines if newlines_outside.all() else newlines[newlines_outside]
    else:
        ends = newlines
    starts = np.concatenate(([0], ends + 1))
    if starts[-1] == len(buf):
        starts = starts[:-1]
    records = _slices(data, starts)
    lines = np.arange(1, len(starts) + 1)
    if len(ends) != len(newlines):  # some records span lines: number them by their start
        lines = np.searchsorted(newlines, starts) + 1
    frame = pl.DataFrame({_LINE: lines, "record": records})
    frame = frame.slice(1).filter(
        pl.col("record").bin.size()
        > pl.col("record").bin.ends_with(b"\r\n").cast(pl.UInt32)
        + pl.col("record").bin.ends_with(b"\n").cast(pl.UInt32)
    )
    return frame.with_columns(
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(_ROW), record_hash(frame["record"])
    )


def parse_lines(header: bytes, lines: pl.DataFrame, spec: TableSpec) -> pl.DataFrame:
    """Some lines of a file (`split_lines`) parsed as `parse_text` would, with the
    whole-file checks on these lines and their own row and line numbers."""
    if not len(lines):
        _check_utf8(header, spec.file_name)
        _read_header(header, spec)
        return pl.DataFrame(
            schema={**dict.fromkeys(spec.columns, pl.String), _LINE: pl.Int64, _ROW: pl.Int64}
        )
    body = b"".join(lines["record"].to_list())
    if not body.endswith(b"\n"):
        body += b"\n"
    text = parse_text(header + body, spec)
    if text.height != len(lines):
        raise InputDataError("the records do not parse one by one", file=spec.file_name)
    return text.with_columns(lines[_LINE], lines[_ROW])


def check_references(frames: dict[str, pl.DataFrame]) -> None:
    """Every link of `REFERENCES` between typed frames (carrying `ROW` and `LINE`) holds."""
    _check_references(frames)


def purchase_date_range(source: Path) -> tuple[date, date]:
    """First and last purchase day, reading only that column: cheap enough to size the
    daily partitions when the definitions load."""
    src = _Source.open(source)
    spec = TABLES["orders"]
    column = "order_purchase_timestamp"
    if not src.has(spec.file_name):
        src.read(spec.file_name)  # raises the missing-file error
    try:
        raw = pl.read_csv(src.polars_source(spec.file_name), columns=[column], infer_schema=False)
    except pl.exceptions.ColumnNotFoundError as exc:
        raise InputDataError(
            f"missing column '{column}'; expected: {', '.join(spec.columns)}",
            file=spec.file_name,
            column=column,
        ) from exc
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputDataError(f"cannot read: {exc}", file=spec.file_name) from exc
    stamps = raw.select(_cast_expr(column, TIMESTAMP))[column]
    bad = raw.with_row_index(_ROW, offset=1).filter(
        pl.col(column).str.len_bytes().gt(0) & stamps.is_null()
    )
    if not bad.is_empty():
        raise InputDataError(
            f"expected {_describe(TIMESTAMP)}, found {_short(bad[column][0])}",
            file=spec.file_name,
            column=column,
            row=int(bad[_ROW][0]),
        )
    if stamps.null_count() == len(stamps):
        raise InputDataError("no purchase timestamps: no data rows", file=spec.file_name)
    return stamps.min().date(), stamps.max().date()
