"""As-of cuts, snapshot writing, discovery safety, deep verification and replay."""

from __future__ import annotations

import json
import os
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from olist_churn_dagster.lib.ingest import snapshots
from olist_churn_dagster.lib.ingest.schema import TABLES, write_table_csv
from olist_churn_dagster.lib.ingest.snapshots import (
    MARKER_FILE,
    SnapshotError,
    cut_as_of,
    inspect_snapshot,
    replay,
    scan_snapshots,
    verify_snapshot,
    write_snapshot,
)

T = datetime.fromisoformat


def _frame(name: str, rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=TABLES[name].schema, orient="row")


def _order(oid: str, status: str, purchase: str, approved=None, carrier=None, customer=None):
    stamps = [T(s) if s else None for s in (purchase, approved, carrier, customer)]
    return (oid, f"c-{oid}", status, *stamps, T("2024-03-01 00:00:00"))


ORDERS = [
    # delivered on 01-20, handed to the carrier on 01-12, approved on 01-10
    _order("o1", "delivered", "2024-01-10 10:00", "2024-01-10 11:00", "2024-01-12", "2024-01-20"),
    # approved only after midnight of 01-11
    _order("o2", "delivered", "2024-01-10 23:00", "2024-01-11 01:00", "2024-01-12", "2024-01-14"),
    _order("o3", "shipped", "2024-01-05 09:00:00", "2024-01-05 10:00", "2024-01-16"),
    _order("o4", "canceled", "2024-01-08 08:00:00", "2024-01-16 08:00"),
    _order("o5", "invoiced", "2024-01-14 23:59:59"),
    _order("o6", "processing", "2024-01-15 00:00:00"),
    # delivered, but the source never recorded when: nothing to roll back
    _order("o7", "delivered", "2024-01-02 12:00:00", "2024-01-02 13:00", "2024-01-03"),
]


def _tables() -> dict[str, pl.DataFrame]:
    order_ids = [row[0] for row in ORDERS]
    items = [(oid, 1, "p1", "s1", T("2024-01-20 00:00:00"), 10.5, 2.25) for oid in order_ids]
    items.append(("o1", 2, "p2", "s2", T("2024-01-20 00:00:00"), 99.99, 0.0))
    payments = [(oid, 1, "credit_card", 3, 12.75) for oid in order_ids]
    reviews = [
        ("r1", "o1", 5, None, 'great, "fast"\nthanks', T("2024-01-21 00:00:00"), None),
        ("r3", "o3", 2, "late", None, T("2024-01-14 10:00:00"), T("2024-01-15 00:00:00")),
        ("r4", "o4", 1, None, "never came", T("2024-01-15 00:00:00"), T("2024-01-15 02:00:00")),
        ("r7", "o7", 4, None, None, T("2024-01-04 00:00:00"), T("2024-01-05 00:00:00")),
    ]
    return {
        "orders": _frame("orders", ORDERS),
        "order_items": _frame("order_items", items),
        "order_payments": _frame("order_payments", payments),
        "order_reviews": _frame("order_reviews", reviews),
        "customers": _frame(
            "customers", [(f"c-{oid}", f"u-{oid}", "01310", "sao paulo", "SP") for oid in order_ids]
        ),
        "products": _frame(
            "products",
            [("p1", "beleza_saude", 40, 300, 1, 500, 20, 10, 15), ("p2", None, *[None] * 7)],
        ),
        "sellers": _frame(
            "sellers", [("s1", "01001", "sao paulo", "SP"), ("s2", "09999", "x", "RJ")]
        ),
        "category_translation": _frame("category_translation", [("beleza_saude", "health_beauty")]),
    }


def _order_row(tables: dict[str, pl.DataFrame], oid: str) -> dict:
    rows = tables["orders"].filter(pl.col("order_id") == oid)
    assert rows.height == 1, f"order {oid} should be kept"
    return rows.row(0, named=True)


# --------------------------------------------------------------------------- cut_as_of


def test_delivered_after_cutoff_rolls_back_to_shipped() -> None:
    cut = cut_as_of(_tables(), date(2024, 1, 15))
    o1 = _order_row(cut, "o1")
    assert o1["order_status"] == "shipped"
    assert o1["order_delivered_customer_date"] is None
    assert o1["order_delivered_carrier_date"] == T("2024-01-12 00:00:00")
    assert o1["order_estimated_delivery_date"] == T("2024-03-01 00:00:00")  # a promise, kept


def test_carrier_after_cutoff_too_rolls_back_to_approved_or_created() -> None:
    cut = cut_as_of(_tables(), date(2024, 1, 11))
    o1, o2 = _order_row(cut, "o1"), _order_row(cut, "o2")
    assert (o1["order_status"], o1["order_delivered_carrier_date"]) == ("approved", None)
    assert o1["order_approved_at"] == T("2024-01-10 11:00:00")
    assert (o2["order_status"], o2["order_approved_at"]) == ("created", None)


def test_shipped_with_carrier_after_cutoff_becomes_approved() -> None:
    o3 = _order_row(cut_as_of(_tables(), date(2024, 1, 16)), "o3")
    assert (o3["order_status"], o3["order_delivered_carrier_date"]) == ("approved", None)
    o3_later = _order_row(cut_as_of(_tables(), date(2024, 1, 17)), "o3")
    assert o3_later["order_status"] == "shipped"


def test_purchase_exactly_at_midnight_has_not_happened() -> None:
    cut = cut_as_of(_tables(), date(2024, 1, 15))
    kept = set(cut["orders"]["order_id"])
    assert "o5" in kept  # 2024-01-14 23:59:59
    assert "o6" not in kept  # 2024-01-15 00:00:00
    assert "o6" in set(cut_as_of(_tables(), date(2024, 1, 16))["orders"]["order_id"])


def test_statuses_without_own_timestamp_stand() -> None:
    cut = cut_as_of(_tables(), date(2024, 1, 15))
    o4 = _order_row(cut, "o4")
    assert (o4["order_status"], o4["order_approved_at"]) == ("canceled", None)
    assert _order_row(cut, "o5")["order_status"] == "invoiced"
    # delivered without a delivery timestamp in the source: the cut erased nothing
    assert _order_row(cut, "o7")["order_status"] == "delivered"


def test_reviews_follow_creation_and_answers_are_erased() -> None:
    reviews = cut_as_of(_tables(), date(2024, 1, 15))["order_reviews"]
    assert sorted(reviews["review_id"]) == ["r3", "r7"]  # r4 created at the cutoff, r1 later
    answers = dict(zip(reviews["review_id"], reviews["review_answer_timestamp"], strict=True))
    assert answers == {"r3": None, "r7": T("2024-01-05 00:00:00")}


def test_children_follow_kept_orders_and_untimed_tables_stay_whole() -> None:
    tables = _tables()
    cut = cut_as_of(tables, date(2024, 1, 9))
    kept = {"o3", "o4", "o7"}
    assert set(cut["orders"]["order_id"]) == kept
    assert set(cut["order_items"]["order_id"]) == kept
    assert set(cut["order_payments"]["order_id"]) == kept
    assert set(cut["customers"]["customer_id"]) == {f"c-{oid}" for oid in kept}
    for name in ("products", "sellers", "category_translation"):
        assert_frame_equal(cut[name], tables[name])
    assert list(cut) == list(tables)
    for name, df in cut.items():
        assert df.schema == TABLES[name].schema, name


def test_cut_after_everything_changes_nothing() -> None:
    tables = _tables()
    cut = cut_as_of(tables, date(2024, 6, 1))
    for name in tables:
        assert_frame_equal(cut[name], tables[name])


def test_cut_refuses_children_without_orders() -> None:
    tables = _tables()
    with pytest.raises(ValueError, match="needs the orders table"):
        cut_as_of({"order_items": tables["order_items"]}, date(2024, 1, 15))
    with pytest.raises(ValueError, match="unknown table"):
        cut_as_of({"nonsense": tables["orders"]}, date(2024, 1, 15))


# --------------------------------------------------------------------------- writing, scanning


def test_write_scan_verify_round_trip(tmp_path: Path) -> None:
    as_of = date(2024, 1, 15)
    path = write_snapshot(cut_as_of(_tables(), as_of), tmp_path, as_of)
    assert path == tmp_path / "2024-01-15"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2024-01-15"]  # no temp left
    files = {p.name for p in path.iterdir()}
    assert files == {MARKER_FILE} | {TABLES[n].file_name for n in _tables()}
    manifest = json.loads((path / MARKER_FILE).read_text())
    assert manifest["as_of"] == "2024-01-15"
    assert manifest["tables"]["orders"]["rows"] == 6  # all but o6
    assert manifest["tables"]["order_reviews"]["rows"] == 2

    [info] = scan_snapshots(tmp_path)
    assert (info.as_of, info.complete, info.problem) == (as_of, True, None)
    assert info.fingerprint and len(info.fingerprint) == 64
    assert inspect_snapshot(tmp_path, "2024-01-15") == info
    verify_snapshot(info)


def test_fingerprint_stable_for_same_content_and_changes_with_a_row(tmp_path: Path) -> None:
    as_of = date(2024, 1, 15)
    tables = cut_as_of(_tables(), as_of)
    write_snapshot(tables, tmp_path, as_of)
    first = inspect_snapshot(tmp_path, "2024-01-15").fingerprint
    write_snapshot(tables, tmp_path, as_of)
    assert inspect_snapshot(tmp_path, "2024-01-15").fingerprint == first

    changed = dict(tables)
    changed["order_payments"] = tables["order_payments"].with_columns(
        pl.when(pl.col("order_id") == "o1")
        .then(13.0)
        .otherwise("payment_value")
        .alias("payment_value")
    )
    write_snapshot(changed, tmp_path, as_of)
    info = inspect_snapshot(tmp_path, "2024-01-15")
    assert info.fingerprint != first
    verify_snapshot(info)


def test_replacing_a_snapshot_swaps_it_whole(tmp_path: Path, monkeypatch) -> None:
    as_of = date(2024, 1, 15)
    old = write_snapshot(cut_as_of(_tables(), as_of), tmp_path, as_of)
    before = inspect_snapshot(tmp_path, "2024-01-15")
    orders_file = old / TABLES["orders"].file_name
    old_orders = orders_file.read_bytes()

    calls = {"n": 0}
    real_write = snapshots.write_table_csv

    def failing_write(df: pl.DataFrame, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        real_write(df, path)

    monkeypatch.setattr(snapshots, "write_table_csv", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_snapshot(cut_as_of(_tables(), date(2024, 1, 20)), tmp_path, as_of)
    # the failed write left the old snapshot untouched and no temporary folder behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2024-01-15"]
    assert orders_file.read_bytes() == old_orders
    verify_snapshot(before)

    monkeypatch.setattr(snapshots, "write_table_csv", real_write)
    write_snapshot(cut_as_of(_tables(), date(2024, 1, 20)), tmp_path, as_of)
    after = inspect_snapshot(tmp_path, "2024-01-15")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2024-01-15"]
    assert after.fingerprint != before.fingerprint
    verify_snapshot(after)
    with pytest.raises(SnapshotError, match="changed since it was scanned"):
        verify_snapshot(before)


def test_write_requires_the_required_tables(tmp_path: Path) -> None:
    tables = _tables()
    del tables["sellers"]
    with pytest.raises(ValueError, match="sellers"):
        write_snapshot(tables, tmp_path, date(2024, 1, 15))
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- discovery safety


def test_folder_without_marker_is_incomplete_not_bad(tmp_path: Path) -> None:
    folder = tmp_path / "2024-01-05"
    folder.mkdir()
    write_table_csv(_tables()["orders"], folder / TABLES["orders"].file_name)
    (tmp_path / ".tmp-2024-01-06-abc").mkdir()  # a write in progress: ignored
    [info] = scan_snapshots(tmp_path)
    assert (info.as_of, info.complete, info.problem, info.fingerprint) == (
        date(2024, 1, 5),
        False,
        None,
        None,
    )
    with pytest.raises(SnapshotError, match="incomplete"):
        verify_snapshot(info)


def test_bad_names_are_reported_and_never_resolved(tmp_path: Path) -> None:
    root = tmp_path / "snapshots"
    root.mkdir()
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / MARKER_FILE).write_text("{}")
    info = inspect_snapshot(root, "../x")
    assert info.problem and "YYYY-MM-DD" in info.problem
    assert (info.as_of, info.path, info.complete) == (date.min, root, False)

    for name in ("not-a-date", "2024-02-30", "2024-13-01"):
        (root / name).mkdir()
    (root / "2024-1-05").write_text("")
    write_snapshot(cut_as_of(_tables(), date(2024, 1, 15)), root, date(2024, 1, 15))
    infos = scan_snapshots(root)
    assert len(infos) == 5
    assert infos[-1].as_of == date(2024, 1, 15) and infos[-1].complete
    bad = {i.path.name: i.problem for i in infos[:-1]}
    assert set(bad) == {"not-a-date", "2024-02-30", "2024-13-01", "2024-1-05"}
    assert all(problem for problem in bad.values())
    assert "not a valid calendar date" in bad["2024-02-30"]
    assert all(i.as_of == date.min and not i.complete for i in infos[:-1])


def test_missing_root_and_missing_entry(tmp_path: Path) -> None:
    assert scan_snapshots(tmp_path / "nope") == []
    info = inspect_snapshot(tmp_path, "2024-01-01")
    assert info.problem and "does not exist" in info.problem


def test_symlinks_escaping_the_root_are_bad(tmp_path: Path) -> None:
    root = tmp_path / "snapshots"
    as_of = date(2024, 1, 15)
    folder = write_snapshot(cut_as_of(_tables(), as_of), root, as_of)
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    orders = folder / TABLES["orders"].file_name
    orders.unlink()
    orders.symlink_to(secret)
    info = inspect_snapshot(root, "2024-01-15")
    assert not info.complete
    assert info.problem and "outside" in info.problem and orders.name in info.problem

    linked = root / "2024-01-16"
    linked.symlink_to(tmp_path)
    assert "symbolic link" in (inspect_snapshot(root, "2024-01-16").problem or "")


def test_symlink_inside_root_is_allowed(tmp_path: Path) -> None:
    as_of = date(2024, 1, 15)
    folder = write_snapshot(cut_as_of(_tables(), as_of), tmp_path, as_of)
    spare = tmp_path / "spare.csv"
    orders = folder / TABLES["orders"].file_name
    os.replace(orders, spare)
    orders.symlink_to(spare)
    info = inspect_snapshot(tmp_path, "2024-01-15")
    assert info.complete and info.problem is None
    verify_snapshot(info)


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ("{not json", "not a readable JSON"),
        (b"\xff\xfe", "not a readable JSON"),
        ("[]", "'tables' object"),
        ('{"as_of": "2024-01-14", "tables": {}}', "as_of"),
        ("drop:orders", "missing table(s) ['orders']"),
        ("rows:-1", "not a count"),
        ("file:../../etc/passwd", "file is"),
        ("sha:xyz", "sha256"),
    ],
)
def test_corrupted_marker_is_a_problem(tmp_path: Path, marker: str | bytes, expected: str) -> None:
    as_of = date(2024, 1, 15)
    folder = write_snapshot(cut_as_of(_tables(), as_of), tmp_path, as_of)
    path = folder / MARKER_FILE
    manifest = json.loads(path.read_text())
    if isinstance(marker, bytes):
        path.write_bytes(marker)
    elif ":" in marker and not marker.startswith("{"):
        kind, value = marker.split(":", 1)
        entry = manifest["tables"]["orders"]
        if kind == "drop":
            del manifest["tables"][value]
        elif kind == "rows":
            entry["rows"] = int(value)
        elif kind == "file":
            entry["file"] = value
        else:
            entry["sha256"] = value
        path.write_text(json.dumps(manifest))
    else:
        path.write_text(marker)
    info = inspect_snapshot(tmp_path, "2024-01-15")
    assert not info.complete and info.fingerprint is None
    assert info.problem and expected in info.problem
    with pytest.raises(SnapshotError, match="2024-01-15"):
        verify_snapshot(info)


# --------------------------------------------------------------------------- verification


def _written(tmp_path: Path) -> tuple[snapshots.SnapshotInfo, Path]:
    as_of = date(2024, 1, 22)
    folder = write_snapshot(cut_as_of(_tables(), as_of), tmp_path, as_of)
    return inspect_snapshot(tmp_path, folder.name), folder


def test_truncated_csv_fails_row_count(tmp_path: Path) -> None:
    info, folder = _written(tmp_path)
    items = folder / TABLES["order_items"].file_name
    lines = items.read_bytes().splitlines(keepends=True)
    items.write_bytes(b"".join(lines[:-2]))
    with pytest.raises(SnapshotError, match=r"olist_order_items_dataset\.csv: .* says 8 rows.* 6"):
        verify_snapshot(info)


def test_quoted_newlines_count_as_one_row(tmp_path: Path) -> None:
    info, folder = _written(tmp_path)
    reviews = (folder / TABLES["order_reviews"].file_name).read_text()
    assert reviews.count("\n") > 5  # header + 4 rows + the newline inside r1's comment
    verify_snapshot(info)  # must not flag the embedded newline as an extra row


def test_changed_bytes_fail_hash_and_missing_file_fails(tmp_path: Path) -> None:
    info, folder = _written(tmp_path)
    sellers = folder / TABLES["sellers"].file_name
    sellers.write_text(sellers.read_text().replace("sao paulo", "sao paolo"))
    with pytest.raises(SnapshotError, match=r"olist_sellers_dataset\.csv: sha256"):
        verify_snapshot(info)
    sellers.unlink()
    with pytest.raises(SnapshotError, match=r"olist_sellers_dataset\.csv: listed in"):
        verify_snapshot(info)


# --------------------------------------------------------------------------- replay


@pytest.mark.parametrize(
    ("start", "end", "every", "message"),
    [
        (date(2024, 1, 10), date(2024, 1, 9), 1, "after end"),
        (date(2024, 1, 10), date(2024, 1, 12), 0, "every_days"),
        (date(2024, 1, 10), date(2024, 1, 12), -3, "every_days"),
    ],
)
def test_replay_validates_arguments(
    tmp_path: Path, start: date, end: date, every: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        replay(tmp_path / "no-source", start, end, every_days=every, out_root=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_replay_cuts_each_date_like_cut_as_of(tmp_path: Path) -> None:
    from olist_churn_dagster.lib.ingest.loader import load_dataset

    source = tmp_path / "raw"
    for name, df in _tables().items():
        write_table_csv(df, source / TABLES[name].file_name)
    out = tmp_path / "snapshots"
    paths = replay(source, date(2024, 1, 15), date(2024, 1, 22), every_days=3, out_root=out)
    assert [p.name for p in paths] == ["2024-01-15", "2024-01-18", "2024-01-21"]
    infos = scan_snapshots(out)
    assert [i.as_of for i in infos] == [date(2024, 1, 15), date(2024, 1, 18), date(2024, 1, 21)]
    full = load_dataset(source)
    for info in infos:
        verify_snapshot(info)
        loaded = load_dataset(info.path)
        expected = cut_as_of(full, info.as_of)
        assert set(loaded) == set(expected)
        for name in expected:
            assert_frame_equal(loaded[name], expected[name])
