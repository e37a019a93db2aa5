"""As-of snapshots of the source system: cutting, writing, replaying, finding and checking.

A snapshot is a folder `root/YYYY-MM-DD/` holding the Olist CSV files as the source system
would have dumped them at 00:00 of that day, plus a `_SUCCESS` manifest written last. The
snapshot sensor trusts a folder only when the manifest is there and its row counts and
hashes match the files, so a half-copied or tampered snapshot never reaches the warehouse.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path

import polars as pl

from olist_churn_dagster.lib.ingest.schema import (
    REQUIRED_TABLES,
    TABLES,
    TIMESTAMP,
    write_table_csv,
)

MARKER_FILE = "_SUCCESS"
# A manifest is a few hundred bytes; anything far larger is not ours and is not parsed.
MAX_MARKER_BYTES = 1 << 20
_DATE_NAME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Tables whose rows belong to an order and so follow the orders that are kept.
_ORDER_CHILDREN = ("order_items", "order_payments", "order_reviews", "customers")
_UNTIMED = ("products", "sellers", "category_translation", "geolocation")


class SnapshotError(ValueError):
    """A snapshot that must not be loaded: the message names the file and what differs."""


@dataclass(frozen=True)
class SnapshotInfo:
    """What a look at one entry under the snapshot root found.

    `complete=False` with `problem=None` means the marker is not there yet (wait for it);
    a set `problem` means the entry is bad and will never become loadable as it stands.
    `fingerprint` changes whenever any table's content changes, so it suits run keys.
    """

    as_of: date
    path: Path
    complete: bool
    fingerprint: str | None
    problem: str | None


# --------------------------------------------------------------------------- point in time


def _cutoff(as_of: date) -> pl.Expr:
    return pl.lit(datetime.combine(as_of, time()), dtype=TIMESTAMP)


def _before(column: str, cutoff: pl.Expr) -> pl.Expr:
    """True when the timestamp has happened before the cutoff; null counts as not."""
    return (pl.col(column) < cutoff).fill_null(False)


def _erased(column: str, cutoff: pl.Expr) -> pl.Expr:
    """True when the timestamp is set but has not happened by the cutoff."""
    return (pl.col(column) >= cutoff).fill_null(False)


def _happened(column: str, cutoff: pl.Expr) -> pl.Expr:
    """The timestamp if it happened before the cutoff, else null."""
    return pl.when(_before(column, cutoff)).then(pl.col(column)).alias(column)


def _cut_orders(orders: pl.DataFrame, cutoff: pl.Expr) -> pl.DataFrame:
    """Orders purchased before the cutoff, their later events erased, status rolled back.

    Only `delivered` and `shipped` have a timestamp of their own (customer delivery and
    carrier hand-over), so only they can be rolled back: to `shipped` when the carrier
    date still stands, else `approved` when the approval does, else `created`. Every other
    status (canceled, unavailable, invoiced, processing, created, approved) has no
    timestamp that says when it was reached, so it is taken as it stands in the source.
    The estimated delivery date is a promise made at purchase and is kept.
    """
    approved, carrier, customer = (
        "order_approved_at",
        "order_delivered_carrier_date",
        "order_delivered_customer_date",
    )
    status = pl.col("order_status")
    rolled_back = (
        pl.when(_before(carrier, cutoff))
        .then(pl.lit("shipped"))
        .when(_before(approved, cutoff))
        .then(pl.lit("approved"))
        .otherwise(pl.lit("created"))
    )
    new_status = (
        pl.when((status == "delivered") & _erased(customer, cutoff))
        .then(rolled_back)
        .when((status == "shipped") & _erased(carrier, cutoff))
        .then(rolled_back)
        .otherwise(status)
        .alias("order_status")
    )
    return (
        orders.lazy()
        .filter(_before("order_purchase_timestamp", cutoff))
        .with_columns(
            new_status,
            _happened(approved, cutoff),
            _happened(carrier, cutoff),
            _happened(customer, cutoff),
        )
        .collect()
    )


def _cut_child(name: str, df: pl.DataFrame, orders: pl.DataFrame, cutoff: pl.Expr) -> pl.DataFrame:
    """Rows of a table that hangs off an order, restricted to the kept orders."""
    key = "customer_id" if name == "customers" else "order_id"
    kept = df.lazy().join(
        orders.lazy().select(key).unique(), on=key, how="semi", maintain_order="left"
    )
    if name == "order_reviews":
        kept = kept.filter(_before("review_creation_date", cutoff)).with_columns(
            _happened("review_answer_timestamp", cutoff)
        )
    return kept.collect()


def cut_as_of(tables: dict[str, pl.DataFrame], as_of: date) -> dict[str, pl.DataFrame]:
    """The tables as the source system held them at `as_of` 00:00:00.

    An event stamped exactly at that instant has not happened yet. Orders decide what
    their items, payments, reviews and customers keep; tables without timestamps
    (products, sellers, category translation, geolocation) are returned whole. The
    result has the same tables, columns and dtypes as the input.
    """
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise ValueError(f"unknown table(s) {unknown}; expected names from {list(TABLES)}")
    needs_orders = [name for name in _ORDER_CHILDREN if name in tables]
    if needs_orders and "orders" not in tables:
        raise ValueError(f"cutting {needs_orders} needs the orders table")
    cutoff = _cutoff(as_of)
    out: dict[str, pl.DataFrame] = {}
    if "orders" in tables:
        out["orders"] = _cut_orders(tables["orders"], cutoff)
    for name in needs_orders:
        out[name] = _cut_child(name, tables[name], out["orders"], cutoff)
    for name in _UNTIMED:
        if name in tables:
            out[name] = tables[name]
    return {name: out[name] for name in tables}


# --------------------------------------------------------------------------- writing


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def fingerprint(table_hashes: dict[str, str]) -> str:
    """One hash over the per-table hashes: equal content gives an equal fingerprint."""
    text = "\n".join(f"{name}:{table_hashes[name]}" for name in sorted(table_hashes))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_tables(tables: dict[str, pl.DataFrame]) -> None:
    unknown = sorted(set(tables) - set(TABLES))
    missing = [name for name in REQUIRED_TABLES if name not in tables]
    if unknown or missing:
        raise ValueError(
            f"a snapshot needs the tables {REQUIRED_TABLES} (geolocation optional); "
            f"missing {missing}, unknown {unknown}"
        )


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _write_files(tables: dict[str, pl.DataFrame], folder: Path, as_of: date) -> None:
    """The CSV files, then the manifest last, so a marker always describes whole files."""
    entries: dict[str, dict[str, object]] = {}
    for name, spec in TABLES.items():
        if name not in tables:
            continue
        path = folder / spec.file_name
        write_table_csv(tables[name], path)
        rows, digest = tables[name].height, _sha256(path)
        entries[name] = {"file": spec.file_name, "rows": rows, "sha256": digest}
    manifest = {
        "as_of": as_of.isoformat(),
        "created_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "tables": entries,
    }
    marker = folder / MARKER_FILE
    marker.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def write_snapshot(tables: dict[str, pl.DataFrame], root: Path, as_of: date) -> Path:
    """Write `root/YYYY-MM-DD/` so that readers only ever see a whole snapshot.

    The folder is built under a hidden temporary name (ignored by the scanner) and
    renamed into place; an existing snapshot of that day is swapped out and deleted.
    """
    _check_tables(tables)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / as_of.isoformat()
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{as_of.isoformat()}-", dir=root))
    try:
        _write_files(tables, staging, as_of)
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".old-{as_of.isoformat()}-", dir=root))
            os.rename(target, old / "snapshot")
            os.rename(staging, target)
            _remove(old)
        else:
            os.rename(staging, target)
    except BaseException:
        _remove(staging)
        raise
    return target


def replay(
    source: Path, start: date, end: date, *, every_days: int = 1, out_root: Path
) -> list[Path]:
    """Cut one snapshot per date from `start` to `end` inclusive, `every_days` apart.

    Simulates the daily feed from one full dataset, which is read and validated once.
    """
    if start > end:
        raise ValueError(f"replay start {start} is after end {end}")
    if isinstance(every_days, bool) or not isinstance(every_days, int) or every_days < 1:
        raise ValueError(f"replay every_days must be a whole number >= 1, got {every_days!r}")
    from olist_churn_dagster.lib.ingest.loader import load_dataset

    tables = load_dataset(Path(source))
    days = range(0, (end - start).days + 1, every_days)
    return [
        write_snapshot(cut_as_of(tables, as_of), Path(out_root), as_of)
        for as_of in (start + timedelta(days=n) for n in days)
    ]


# --------------------------------------------------------------------------- discovery


def _parse_name(name: str) -> tuple[date | None, str | None]:
    """The date a folder name stands for, or why it stands for none."""
    if not _DATE_NAME.fullmatch(name):
        return None, f"entry {name!r} is not named YYYY-MM-DD"
    try:
        return date.fromisoformat(name), None
    except ValueError:
        return None, f"entry {name!r} is not a valid calendar date"


def _escaping_link(folder: Path, root: Path) -> str | None:
    """The first symlink inside `folder` that leads outside `root`, if any."""
    real_root = root.resolve()
    for child in sorted(folder.iterdir()):
        if child.is_symlink() and not child.resolve().is_relative_to(real_root):
            return f"{child.name} is a symbolic link leading outside the snapshot root"
    return None


def _table_entry(name: str, entry: object) -> tuple[str, int, str]:
    """Validate one manifest table entry and return (file, rows, sha256)."""
    if not isinstance(entry, dict):
        raise SnapshotError(f"{MARKER_FILE}: table {name!r} entry is not an object")
    file_name, rows, digest = entry.get("file"), entry.get("rows"), entry.get("sha256")
    expected = TABLES[name].file_name
    if file_name != expected:
        raise SnapshotError(f"{MARKER_FILE}: table {name!r} file is {file_name!r}, not {expected}")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise SnapshotError(f"{MARKER_FILE}: table {name!r} rows is {rows!r}, not a count")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise SnapshotError(f"{MARKER_FILE}: table {name!r} sha256 is not a sha256 hex digest")
    return file_name, rows, digest


def read_manifest(folder: Path, as_of: date) -> dict[str, tuple[str, int, str]]:
    """The manifest's tables as {name: (file, rows, sha256)}; SnapshotError if unusable."""
    marker = folder / MARKER_FILE
    try:
        with marker.open("rb") as handle:
            raw = handle.read(MAX_MARKER_BYTES + 1)
        if len(raw) > MAX_MARKER_BYTES:
            raise SnapshotError(f"{MARKER_FILE}: larger than {MAX_MARKER_BYTES} bytes")
        manifest = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{MARKER_FILE}: not a readable JSON manifest ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tables"), dict):
        raise SnapshotError(f"{MARKER_FILE}: expected an object with a 'tables' object")
    if manifest.get("as_of") != as_of.isoformat():
        raise SnapshotError(
            f"{MARKER_FILE}: as_of is {manifest.get('as_of')!r}, the folder says {as_of}"
        )
    tables = manifest["tables"]
    unknown = sorted(set(tables) - set(TABLES))
    missing = [name for name in REQUIRED_TABLES if name not in tables]
    if unknown or missing:
        raise SnapshotError(f"{MARKER_FILE}: missing table(s) {missing}, unknown {unknown}")
    return {name: _table_entry(name, entry) for name, entry in tables.items()}


def declared_as_of(source: Path) -> date | None:
    """The `as_of` date a `_SUCCESS` manifest in the source folder declares, or None when
    there is none. An export whose last days were quiet declares its date this way (a
    snapshot always does), since its last purchase says only when the last sale was."""
    marker = source / MARKER_FILE
    if not marker.is_file():
        return None
    try:
        manifest = json.loads(marker.read_bytes()[: MAX_MARKER_BYTES + 1].decode("utf-8"))
        return date.fromisoformat(manifest["as_of"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as exc:
        raise SnapshotError(
            f'{marker}: expected a JSON object with "as_of": "YYYY-MM-DD" ({exc!r})'
        ) from exc
    except ValueError as exc:
        raise SnapshotError(f"{marker}: as_of is not a date YYYY-MM-DD ({exc})") from exc


def _inspect_folder(path: Path, root: Path, as_of: date) -> SnapshotInfo:
    def info(
        complete: bool = False, fp: str | None = None, problem: str | None = None
    ) -> SnapshotInfo:
        return SnapshotInfo(as_of, path, complete, fp, problem)

    if path.is_symlink():
        return info(problem=f"{path.name} is a symbolic link, not a snapshot folder")
    if not path.exists():
        return info(problem=f"{path.name} does not exist under {root}")
    if not path.is_dir():
        return info(problem=f"{path.name} is a file, not a snapshot folder")
    try:
        escaping = _escaping_link(path, root)
    except OSError as exc:
        return info(problem=f"{path.name} cannot be listed ({exc})")
    if escaping:
        return info(problem=escaping)
    if not (path / MARKER_FILE).exists():
        return info()
    try:
        manifest = read_manifest(path, as_of)
    except SnapshotError as exc:
        return info(problem=str(exc))
    return info(True, fingerprint({name: entry[2] for name, entry in manifest.items()}))


def inspect_snapshot(root: Path, name: str) -> SnapshotInfo:
    """One entry under `root`, looked at without loading its tables.

    A name that is not exactly a valid `YYYY-MM-DD` is reported (with `as_of=date.min`)
    and never resolved, so `../x` cannot reach outside the root; such an entry's path is
    `root/name` only when the name is a plain file name, else `root` itself.
    """
    root = Path(root)
    as_of, problem = _parse_name(name)
    if as_of is None:
        plain = name not in ("", ".", "..") and "/" not in name and "\\" not in name
        return SnapshotInfo(date.min, root / name if plain else root, False, None, problem)
    return _inspect_folder(root / name, root, as_of)


def scan_snapshots(root: Path) -> list[SnapshotInfo]:
    """Every entry under `root` (hidden ones, such as write_snapshot's temporary folders,
    excluded), sorted by date; a missing root holds no snapshots."""
    root = Path(root)
    if not root.is_dir():
        return []
    with os.scandir(root) as entries:
        names = sorted(entry.name for entry in entries if not entry.name.startswith("."))
    infos = [inspect_snapshot(root, name) for name in names]
    return sorted(infos, key=lambda info: info.as_of)  # stable: equal dates keep name order


# --------------------------------------------------------------------------- verification


def _count_rows(path: Path) -> int:
    """Data rows as a CSV parser sees them (quoted newlines inside one field count once)."""
    try:
        frame = pl.scan_csv(path, infer_schema=False, quote_char='"', raise_if_empty=False)
        return int(frame.select(pl.len()).collect().item())
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise SnapshotError(f"{path.name}: cannot be parsed as CSV ({exc})") from exc


def _verify_file(folder: Path, real_root: Path, file_name: str, rows: int, digest: str) -> None:
    path = folder / file_name
    if not path.is_file():
        raise SnapshotError(f"{file_name}: listed in {MARKER_FILE} but not in {folder}")
    if not path.resolve().is_relative_to(real_root):
        raise SnapshotError(f"{file_name}: leads outside the snapshot root")
    found = _count_rows(path)
    if found != rows:
        raise SnapshotError(f"{file_name}: {MARKER_FILE} says {rows} rows, the file has {found}")
    actual = _sha256(path)
    if actual != digest:
        raise SnapshotError(
            f"{file_name}: sha256 is {actual}, {MARKER_FILE} says {digest} (content changed)"
        )


def verify_snapshot(info: SnapshotInfo) -> None:
    """Deep check before loading: each listed file is there with its row count and hash.

    Also refuses a snapshot whose manifest changed since `info` was taken, so what is
    loaded is exactly what the fingerprint (and a run key built from it) stands for.
    """
    name = info.path.name
    if info.problem:
        raise SnapshotError(f"snapshot {name}: {info.problem}")
    if not info.complete:
        raise SnapshotError(f"snapshot {name}: incomplete, {MARKER_FILE} is not there yet")
    try:
        manifest = read_manifest(info.path, info.as_of)
    except SnapshotError as exc:
        raise SnapshotError(f"snapshot {name}: {exc}") from exc
    if fingerprint({n: entry[2] for n, entry in manifest.items()}) != info.fingerprint:
        raise SnapshotError(f"snapshot {name}: {MARKER_FILE} changed since it was scanned")
    real_root = info.path.parent.resolve()
    # Two files at a time (hashing releases the GIL): the sensor's tick waits for this.
    with ThreadPoolExecutor(2, thread_name_prefix="verify") as pool:
        checks = [
            pool.submit(_verify_file, info.path, real_root, *entry) for entry in manifest.values()
        ]
        for check in checks:  # the first bad file in the manifest's order is named
            try:
                check.result()
            except SnapshotError as exc:
                raise SnapshotError(f"snapshot {name}: {exc}") from exc
