"""Point-in-time correctness: features from the newest data equal those from the snapshot.

The features engine encodes the as-of rules as interval bounds in SQL; the snapshot cutter
(`snapshots.cut_as_of`, and the replay tool that writes snapshots to disk) applies the same
rules independently in polars by deleting and nulling rows. For every reference date D the
two must agree: the table for D computed from the full generated dataset equals the table
for D computed from the as-of-D snapshot.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from olist_churn_dagster.generator.marketplace import generate_dataset
from olist_churn_dagster.lib.features import FEATURE_FAMILIES, compute_features
from olist_churn_dagster.lib.ingest.loader import load_dataset
from olist_churn_dagster.lib.ingest.snapshots import cut_as_of, replay

SCALE = 0.05
SEED = 11
START = date(2017, 1, 1)
END = date(2018, 8, 31)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pit") / "raw"
    generate_dataset(folder, scale=SCALE, seed=SEED, start=START, end=END)
    return folder


@pytest.fixture(scope="module")
def raw(source: Path) -> dict[str, pl.DataFrame]:
    return load_dataset(source)


def _dates(raw: dict[str, pl.DataFrame]) -> list[date]:
    """Six dates spread over the data: a young window, the middle, the very end."""
    first = raw["orders"]["order_purchase_timestamp"].min().date()
    last = raw["orders"]["order_purchase_timestamp"].max().date()
    span = (last - first).days
    return [first + timedelta(days=round(span * q)) for q in (0.1, 0.3, 0.5, 0.7, 0.9)] + [
        last + timedelta(days=1)
    ]


@pytest.fixture(scope="module")
def full_tables(raw: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """Every family for all the test dates, in one vectorised call per family."""
    return {f: compute_features(f, raw, _dates(raw)) for f in FEATURE_FAMILIES}


def _assert_same(actual: pl.DataFrame, expected: pl.DataFrame) -> None:
    assert_frame_equal(actual, expected, check_exact=False, rel_tol=1e-9, abs_tol=1e-9)


def test_dates_have_active_sellers(full_tables: dict[str, pl.DataFrame], raw) -> None:
    counts = full_tables["sales"].group_by("reference_date").len()
    assert counts.height == len(_dates(raw)), "every test date should have active sellers"
    assert counts["len"].min() >= 5


def test_no_nan_or_inf_on_generated_data(full_tables: dict[str, pl.DataFrame]) -> None:
    for family, table in full_tables.items():
        floats = [c for c, t in table.schema.items() if t == pl.Float64]
        bad = table.select(~pl.col(floats).drop_nulls().is_finite().all())
        assert not any(bad.row(0)), f"{family}: NaN or inf in {bad}"


@pytest.mark.parametrize("index", range(6))
def test_full_data_equals_as_of_snapshot(
    raw: dict[str, pl.DataFrame], full_tables: dict[str, pl.DataFrame], index: int
) -> None:
    as_of = _dates(raw)[index]
    snapshot = cut_as_of(raw, as_of)
    # the snapshot really lacks the future: fewer orders, and no timestamp >= D
    assert snapshot["orders"].height < raw["orders"].height or index == 5
    for family in FEATURE_FAMILIES:
        from_full = full_tables[family].filter(pl.col("reference_date") == as_of)
        from_snapshot = compute_features(family, snapshot, [as_of])
        assert from_full.height > 0
        _assert_same(from_full, from_snapshot)


def test_single_date_call_equals_the_vectorised_call(
    raw: dict[str, pl.DataFrame], full_tables: dict[str, pl.DataFrame]
) -> None:
    """Pruning by the date range must not change any value."""
    as_of = _dates(raw)[2]
    for family in FEATURE_FAMILIES:
        single = compute_features(family, raw, [as_of])
        _assert_same(full_tables[family].filter(pl.col("reference_date") == as_of), single)


def test_replayed_snapshots_on_disk_give_the_same_features(
    source: Path, raw: dict[str, pl.DataFrame], tmp_path: Path
) -> None:
    """Through the replay tool: CSV snapshots written, read back by the loader."""
    start = _dates(raw)[3]
    dates = [start, start + timedelta(days=17)]
    folders = replay(source, dates[0], dates[1], every_days=17, out_root=tmp_path)
    assert len(folders) == 2
    for as_of, folder in zip(dates, folders, strict=True):
        snapshot = load_dataset(folder)
        for family in FEATURE_FAMILIES:
            from_full = compute_features(family, raw, [as_of])
            assert from_full.height > 0
            _assert_same(from_full, compute_features(family, snapshot, [as_of]))
