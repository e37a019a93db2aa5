"""Bad input: every damaged source goes through the raw load of the core (`plan_load` and
`apply_load` in one warehouse transaction, as the `raw_tables` asset runs them) against a
warehouse that already holds good raw tables, and, where a snapshot can carry the damage,
through the snapshot sensor too. A few cases also run end to end through the
`load_raw_tables` job, which must report the loader's error as the step's failure.

Each case must fail with a message naming the file (and the column or row where that
applies) and leave every table of the warehouse exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from olist_churn_dagster.lib.ingest.delta import apply_load, plan_load
from olist_churn_dagster.lib.ingest.loader import MAX_FIELD_BYTES, InputDataError
from olist_churn_dagster.lib.ingest.schema import TABLES
from olist_churn_dagster.lib.ingest.snapshots import MARKER_FILE, inspect_snapshot, scan_snapshots
from olist_churn_dagster.lib.warehouse import transaction
from olist_churn_dagster_tests.reliability.conftest import (
    evaluate_snapshot_sensor,
    failure_message,
    run_job,
    skip_message,
    warehouse_checksums,
)

ORDERS = TABLES["orders"].file_name
ITEMS = TABLES["order_items"].file_name
REVIEWS = TABLES["order_reviews"].file_name
CUSTOMERS = TABLES["customers"].file_name
PRODUCTS = TABLES["products"].file_name
SELLERS = TABLES["sellers"].file_name


# --------------------------------------------------------------------------- damaging


def _read(folder: Path, table: str) -> pl.DataFrame:
    return pl.read_csv(folder / TABLES[table].file_name, infer_schema=False)


def _write(frame: pl.DataFrame, folder: Path, table: str) -> None:
    frame.write_csv(folder / TABLES[table].file_name, null_value="")


def _set_value(folder: Path, table: str, column: str, index: int, value: str | None) -> None:
    """Put `value` in the 0-based data row `index` of one column (the file's row index+1)."""
    frame = _read(folder, table)
    values = frame[column].to_list()
    values[index] = value
    _write(frame.with_columns(pl.Series(column, values, dtype=pl.String)), folder, table)


def _first_index_with(folder: Path, table: str, column: str) -> int:
    frame = _read(folder, table).with_row_index("index")
    return int(frame.filter(pl.col(column).is_not_null())["index"][0])


def _missing_file(folder: Path) -> list[str]:
    (folder / ITEMS).unlink()
    return ["file(s) not found"]


def _missing_column(folder: Path) -> list[str]:
    _write(_read(folder, "order_items").drop("price"), folder, "order_items")
    return ["column 'price'", "missing column(s) 'price'"]


def _extra_column(folder: Path) -> list[str]:
    frame = _read(folder, "sellers").with_columns(pl.lit("5").alias("seller_rating"))
    _write(frame, folder, "sellers")
    return ["column 'seller_rating'", "unexpected column(s) 'seller_rating'"]


def _renamed_column(folder: Path) -> list[str]:
    frame = _read(folder, "customers").rename({"customer_city": "customer_town"})
    _write(frame, folder, "customers")
    return [
        "column 'customer_city'",
        "missing column(s) 'customer_city'",
        "unexpected column(s) 'customer_town'",
        "(renamed?)",
    ]


def _text_in_number(folder: Path) -> list[str]:
    _set_value(folder, "order_items", "price", 2, "12,50")
    return ["column 'price'", "row 3 (line ", "expected a finite number", "'12,50'"]


def _fraction_in_integer(folder: Path) -> list[str]:
    _set_value(folder, "order_items", "order_item_id", 4, "1.5")
    return ["column 'order_item_id'", "row 5 (line ", "expected an integer", "'1.5'"]


def _bad_timestamp(folder: Path) -> list[str]:
    _set_value(folder, "orders", "order_purchase_timestamp", 1, "31/12/2025 10:00")
    return [
        "column 'order_purchase_timestamp'",
        "row 2 (line ",
        "expected a timestamp",
        "'31/12/2025",
    ]


def _empty_file(folder: Path) -> list[str]:
    (folder / ORDERS).write_bytes(b"")
    return ["the file is empty (0 bytes)"]


def _header_only(folder: Path) -> list[str]:
    path = folder / SELLERS
    path.write_bytes(path.read_bytes().split(b"\n", 1)[0] + b"\n")
    return ["the file has a header but no data rows"]


def _truncated_last_line(folder: Path) -> list[str]:
    path = folder / ITEMS
    lines = path.read_bytes().rstrip(b"\n").split(b"\n")
    last = lines[-1]
    cut = last[: [i for i, byte in enumerate(last) if byte == ord(",")][2]]  # three fields
    path.write_bytes(b"\n".join([*lines[:-1], cut]))
    return [
        "the last line looks cut short",
        f"row {len(lines) - 1} (line ",
        "found 3 fields, expected 7",
    ]


def _unclosed_quote(folder: Path) -> list[str]:
    path = folder / SELLERS
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b",", b',"unterminated ', 1)
    path.write_bytes(b"\n".join(lines))
    return ["a quoted field is never closed"]


def _duplicate_key(folder: Path) -> list[str]:
    frame = _read(folder, "orders")
    _set_value(folder, "orders", "order_id", 9, frame["order_id"][2])
    return [
        "column 'order_id'",
        "row 3 (line ",
        "duplicate primary key (order_id)",
        "on rows 3, 10;",
    ]


def _unknown_order(folder: Path) -> list[str]:
    _set_value(folder, "order_items", "order_id", 6, "f" * 32)
    return [
        "column 'order_id'",
        "row 7 (line ",
        f"point at orders unknown to {ORDERS}",
        repr("f" * 32),
    ]


def _delivered_before_purchase(folder: Path) -> list[str]:
    index = _first_index_with(folder, "orders", "order_delivered_customer_date")
    _set_value(folder, "orders", "order_delivered_customer_date", index, "2000-01-01 00:00:00")
    return [
        "column 'order_delivered_customer_date'",
        f"row {index + 1} (line ",
        "before it was purchased",
    ]


def _future_timestamp(folder: Path) -> list[str]:
    index = _first_index_with(folder, "orders", "order_approved_at")
    _set_value(folder, "orders", "order_approved_at", index, "2099-01-01 00:00:00")
    return ["column 'order_approved_at'", f"row {index + 1} (line ", "timestamp in the future"]


def _not_utf8(folder: Path) -> list[str]:
    path = folder / CUSTOMERS
    lines = path.read_bytes().split(b"\n")
    lines[4] = lines[4] + b"\xe3"  # a Latin-1 byte at the end of line 5
    path.write_bytes(b"\n".join(lines))
    return ["not valid UTF-8", "byte 0xe3", "line 5"]


def _huge_field(folder: Path) -> list[str]:
    size = MAX_FIELD_BYTES + 200_000
    _set_value(folder, "products", "product_category_name", 1, "x" * size)
    return [
        "column 'product_category_name'",
        "line 3",
        f"a field of {size:,} bytes exceeds the limit of {MAX_FIELD_BYTES:,} bytes",
    ]


def _unknown_status(folder: Path) -> list[str]:
    _set_value(folder, "orders", "order_status", 0, "lost")
    return ["column 'order_status'", "row 1 (line ", "expected one of", "'lost'"]


def _score_out_of_range(folder: Path) -> list[str]:
    _set_value(folder, "order_reviews", "review_score", 0, "9")
    return ["column 'review_score'", "row 1 (line ", "expected a review score from 1 to 5"]


def _negative_price(folder: Path) -> list[str]:
    _set_value(folder, "order_items", "price", 4, "-3.5")
    return ["column 'price'", "row 5 (line ", "expected a value >= 0", "-3.5"]


def _missing_value(folder: Path) -> list[str]:
    _set_value(folder, "orders", "customer_id", 3, None)
    return ["column 'customer_id'", "row 4 (line ", "expected a value, it is empty"]


def _source_gone(folder: Path) -> list[str]:
    shutil.rmtree(folder)
    return ["source not found", str(folder)]


@dataclass(frozen=True)
class BadInput:
    id: str
    file: str  # the file the message must name ("" when there is no file to name)
    damage: Callable[[Path], list[str]]  # damages a folder, returns the other fragments
    in_snapshot: bool = True  # can the same damage reach a snapshot folder?


CASES = [
    BadInput("missing-file", ITEMS, _missing_file),
    BadInput("missing-column", ITEMS, _missing_column),
    BadInput("extra-column", SELLERS, _extra_column),
    BadInput("renamed-column", CUSTOMERS, _renamed_column),
    BadInput("text-in-numeric-column", ITEMS, _text_in_number),
    BadInput("fraction-in-integer-column", ITEMS, _fraction_in_integer),
    BadInput("unparseable-timestamp", ORDERS, _bad_timestamp),
    BadInput("empty-file-0-bytes", ORDERS, _empty_file),
    BadInput("header-only", SELLERS, _header_only),
    BadInput("truncated-last-line", ITEMS, _truncated_last_line),
    BadInput("quote-never-closed", SELLERS, _unclosed_quote),
    BadInput("duplicate-primary-key", ORDERS, _duplicate_key),
    BadInput("items-of-unknown-orders", ITEMS, _unknown_order),
    BadInput("delivered-before-purchase", ORDERS, _delivered_before_purchase),
    BadInput("timestamp-in-the-future", ORDERS, _future_timestamp),
    BadInput("non-utf8-bytes", CUSTOMERS, _not_utf8),
    BadInput("field-over-1mb", PRODUCTS, _huge_field),
    BadInput("unknown-order-status", ORDERS, _unknown_status),
    BadInput("review-score-out-of-range", REVIEWS, _score_out_of_range),
    BadInput("negative-price", ITEMS, _negative_price),
    BadInput("required-value-empty", ORDERS, _missing_value),
    BadInput("source-folder-missing", "", _source_gone, in_snapshot=False),
]


def _assert_names_all(message: str, fragments: list[str]) -> None:
    missing = [fragment for fragment in fragments if fragment not in message]
    assert not missing, f"message lacks {missing}:\n{message[-3000:]}"


# --------------------------------------------------------------------------- loader


@pytest.fixture(scope="module")
def intact(warehouse: Path) -> dict[str, str]:
    """The checksums of the warehouse as the good load left it: every case must end with
    these (a case that changed a table fails itself, and every later case too)."""
    checksums = warehouse_checksums(warehouse)
    assert {f"raw.{name}" for name in TABLES} <= set(checksums)
    assert not checksums["raw.orders"].startswith("0 rows")
    return checksums


def _damaged_copy(case: BadInput, raw_dir: Path, folder: Path) -> tuple[Path, list[str]]:
    """A copy of the good source with the case's damage, and what its error must name."""
    source = folder / "raw"
    shutil.copytree(raw_dir, source)
    fragments = [case.file, *case.damage(source)] if case.file else case.damage(source)
    return source, fragments


def _error_chain(error: BaseException | None) -> str:
    """`Type: message` of an exception and of each one it was raised from."""
    texts = []
    while error is not None:
        texts.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(texts)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_source_is_refused_by_the_raw_load_and_changes_nothing(
    case: BadInput, data_dir: Path, warehouse: Path, intact: dict[str, str], tmp_path: Path
) -> None:
    source, fragments = _damaged_copy(case, data_dir / "raw", tmp_path)

    with pytest.raises(InputDataError) as refused, transaction(warehouse) as conn:
        apply_load(conn, plan_load(conn, source, full=True))

    _assert_names_all(_error_chain(refused.value), ["InputDataError", *fragments])
    assert warehouse_checksums(warehouse) == intact


# A file-level, a row-level and a source-level case: the job adds the step failure.
JOB_IDS = {"missing-file", "duplicate-primary-key", "source-folder-missing"}
JOB_CASES = [case for case in CASES if case.id in JOB_IDS]


@pytest.mark.parametrize("case", JOB_CASES, ids=lambda case: case.id)
def test_bad_source_fails_the_load_raw_tables_job_and_changes_nothing(
    case: BadInput,
    definitions: dg.Definitions,
    data_dir: Path,
    warehouse: Path,
    intact: dict[str, str],
    tmp_path: Path,
) -> None:
    source, fragments = _damaged_copy(case, data_dir / "raw", tmp_path)

    result = run_job(definitions, "load_raw_tables", source=source)

    assert not result.success
    assert result.failure_data_for_node("raw_tables") is not None
    _assert_names_all(failure_message(result), ["InputDataError", *fragments])
    assert warehouse_checksums(warehouse) == intact


# --------------------------------------------------------------------------- snapshot sensor


def _copy_snapshot(good_snapshot: Path, root: Path, name: str) -> Path:
    return Path(shutil.copytree(good_snapshot, root / name, symlinks=True))


@pytest.mark.parametrize(
    "case", [case for case in CASES if case.in_snapshot], ids=lambda case: case.id
)
def test_snapshot_damaged_after_its_marker_is_skipped(
    case: BadInput,
    definitions: dg.Definitions,
    warehouse: Path,
    intact: dict[str, str],
    good_snapshot: Path,
    snapshot_root: Path,
    snapshot_day: date,
) -> None:
    folder = _copy_snapshot(good_snapshot, snapshot_root, snapshot_day.isoformat())
    case.damage(folder)

    result = evaluate_snapshot_sensor(definitions)

    assert result.run_requests == []
    _assert_names_all(skip_message(result), [f"snapshot {snapshot_day}: {case.file}: "])
    assert warehouse_checksums(warehouse) == intact


def test_intact_snapshot_copy_is_launched(
    definitions: dg.Definitions, good_snapshot: Path, snapshot_root: Path, snapshot_day: date
) -> None:
    """The control for the cases above and below: the same copy, undamaged, launches."""
    folder = _copy_snapshot(good_snapshot, snapshot_root, snapshot_day.isoformat())
    result = evaluate_snapshot_sensor(definitions)
    (request,) = result.run_requests
    assert request.run_config["ops"]["raw_tables"]["config"]["source"] == str(folder)


def _name_not_a_date(root: Path, good: Path, day: date, outside: Path) -> list[str]:
    _copy_snapshot(good, root, "latest")
    return ["latest", "is not named YYYY-MM-DD"]


def _impossible_date(root: Path, good: Path, day: date, outside: Path) -> list[str]:
    _copy_snapshot(good, root, "2025-02-30")
    return ["2025-02-30", "not a valid calendar date"]


def _dots_in_name(root: Path, good: Path, day: date, outside: Path) -> list[str]:
    _copy_snapshot(good, root, "x..")
    return ["'x..' is not named YYYY-MM-DD"]


def _without_marker(root: Path, good: Path, day: date, outside: Path) -> list[str]:
    (_copy_snapshot(good, root, day.isoformat()) / MARKER_FILE).unlink()
    return [f"waiting for the marker of {day}"]


def _symlink_leaving_data_dir(root: Path, good: Path, day: date, outside: Path) -> list[str]:
    folder = _copy_snapshot(good, root, day.isoformat())
    target = outside / SELLERS
    shutil.copyfile(folder / SELLERS, target)  # same bytes: only the link itself is wrong
    (folder / SELLERS).unlink()
    (folder / SELLERS).symlink_to(target)
    return [f"{day}: {SELLERS} is a symbolic link leading outside the snapshot root"]


def _folder_is_symlink(root: Path, good: Path, day: date, outside: Path) -> list[str]:
    (root / day.isoformat()).symlink_to(good, target_is_directory=True)
    return [f"{day}: {day} is a symbolic link, not a snapshot folder"]


def _marker_not_json(root: Path, good: Path, day: date, outside: Path) -> list[str]:
    folder = _copy_snapshot(good, root, day.isoformat())
    (folder / MARKER_FILE).write_text("{not json", encoding="utf-8")
    return [f"{day}: {MARKER_FILE}: not a readable JSON manifest"]


def _marker_of_another_day(root: Path, good: Path, day: date, outside: Path) -> list[str]:
    other = day - timedelta(days=1)
    _copy_snapshot(good, root, other.isoformat())
    return [f"{other}: {MARKER_FILE}: as_of is '{day}', the folder says {other}"]


@dataclass(frozen=True)
class BadEntry:
    id: str
    make: Callable[[Path, Path, date, Path], list[str]]  # (root, good, day, outside)


ENTRIES = [
    BadEntry("name-not-a-date", _name_not_a_date),
    BadEntry("impossible-calendar-date", _impossible_date),
    BadEntry("dots-in-name", _dots_in_name),
    BadEntry("no-marker-yet", _without_marker),
    BadEntry("symlink-inside-leaving-data-dir", _symlink_leaving_data_dir),
    BadEntry("snapshot-folder-is-a-symlink", _folder_is_symlink),
    BadEntry("marker-not-json", _marker_not_json),
    BadEntry("marker-of-another-day", _marker_of_another_day),
]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda entry: entry.id)
def test_bad_snapshot_entry_is_skipped_with_a_reason(
    entry: BadEntry,
    definitions: dg.Definitions,
    data_dir: Path,
    warehouse: Path,
    intact: dict[str, str],
    good_snapshot: Path,
    snapshot_root: Path,
    snapshot_day: date,
    tmp_path: Path,
) -> None:
    assert not tmp_path.resolve().is_relative_to(data_dir.resolve())
    fragments = entry.make(snapshot_root, good_snapshot, snapshot_day, tmp_path)

    result = evaluate_snapshot_sensor(definitions)

    assert result.run_requests == []
    _assert_names_all(skip_message(result), fragments)
    assert warehouse_checksums(warehouse) == intact


def test_dotdot_names_never_reach_outside_the_root(
    definitions: dg.Definitions,
    data_dir: Path,
    good_snapshot: Path,
    snapshot_root: Path,
    snapshot_day: date,
) -> None:
    outside = _copy_snapshot(good_snapshot, data_dir, "x")  # what `../x` would point at
    try:
        info = inspect_snapshot(snapshot_root, "../x")
        assert info.problem == "entry '../x' is not named YYYY-MM-DD"
        assert not info.complete and info.fingerprint is None
        assert info.path == snapshot_root  # never resolved to the folder outside

        # `..x` is a hidden name, like write_snapshot's staging folders: never looked at.
        _copy_snapshot(good_snapshot, snapshot_root, "..x")
        assert [info.path.name for info in scan_snapshots(snapshot_root)] == []
        result = evaluate_snapshot_sensor(definitions)
        assert result.run_requests == []
        assert skip_message(result) == "no new complete snapshot"
    finally:
        shutil.rmtree(outside)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bad_content_with_a_consistent_marker_fails_the_run_and_changes_nothing(
    definitions: dg.Definitions,
    warehouse: Path,
    intact: dict[str, str],
    good_snapshot: Path,
    snapshot_root: Path,
    snapshot_day: date,
) -> None:
    """A source system that dumps bad rows and writes a marker that matches them: the
    sensor cannot tell, launches, and the loader refuses the run before any write."""
    folder = _copy_snapshot(good_snapshot, snapshot_root, snapshot_day.isoformat())
    fragments = _duplicate_key(folder)
    marker = folder / MARKER_FILE
    manifest = json.loads(marker.read_text(encoding="utf-8"))
    manifest["tables"]["orders"]["sha256"] = _sha256(folder / ORDERS)
    marker.write_text(json.dumps(manifest), encoding="utf-8")

    (request,) = evaluate_snapshot_sensor(definitions).run_requests
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("reference_date", [request.partition_key])
    result = definitions.resolve_job_def("load_snapshot").execute_in_process(
        run_config=request.run_config,
        partition_key=request.partition_key,
        tags=request.tags,
        instance=instance,
        raise_on_error=False,
    )

    assert not result.success
    assert result.failure_data_for_node("raw_tables") is not None
    _assert_names_all(failure_message(result), ["InputDataError", ORDERS, *fragments])
    assert warehouse_checksums(warehouse) == intact
