"""A backfill in batches: one timeline per family, batches that only bound the output.

`feature_batches` builds each family's timeline once from the raw history and reads the
batches of dates from it; the frames must equal one pass over all dates, whatever the
batch sizes and the gaps between batches, and the raw history must be scanned the same
number of times for one batch as for many.
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from olist_churn_dagster.generator.marketplace import generate_dataset
from olist_churn_dagster.lib import features as features_package
from olist_churn_dagster.lib.features import (
    FEATURE_FAMILIES,
    ROW_ORDER,
    Backfill,
    active_seller_counts,
    active_sellers,
    compute_features,
    engine,
    feature_batches,
)
from olist_churn_dagster.lib.ingest.loader import load_dataset
from olist_churn_dagster.lib.sales import sale_items


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pl.DataFrame]:
    folder = tmp_path_factory.mktemp("batches") / "raw"
    generate_dataset(folder, scale=0.05, seed=5, start=date(2017, 1, 1), end=date(2018, 6, 30))
    return load_dataset(folder)


def _dates(raw: dict[str, pl.DataFrame]) -> list[date]:
    """Uneven dates: a dense stretch, gaps of various lengths, and the day after the data."""
    last = raw["orders"]["order_purchase_timestamp"].max().date()
    dense = [last - timedelta(days=300 - i) for i in range(12)]
    sparse = [last - timedelta(days=d) for d in (250, 200, 199, 120, 61, 60, 59, 30, 2)]
    return [*dense, *sparse, last + timedelta(days=1)]


def _split(dates: list[date], sizes: list[int]) -> list[list[date]]:
    """Consecutive batches of the given sizes (the last takes the rest)."""
    batches, at = [], 0
    for size in sizes:
        batches.append(dates[at : at + size])
        at += size
    return [*batches, dates[at:]]


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_tiny_batches_equal_one_batch(raw: dict[str, pl.DataFrame], family: str) -> None:
    dates = _dates(raw)
    one = compute_features(family, raw, dates)
    batches = _split(dates, [1, 1, 3, 1, 5, 2, 1, 1, 2])
    frames = list(feature_batches(family, raw, batches))
    assert len(frames) == len(batches)
    for frame, batch in zip(frames, batches, strict=True):
        assert set(frame.get_column("reference_date").unique()) == set(batch)
    assert one.height > 500
    assert_frame_equal(pl.concat(frames).sort(ROW_ORDER), one)


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_the_raw_history_is_scanned_once_per_backfill(
    raw: dict[str, pl.DataFrame], family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every query over the source tables goes through `engine.read_sources`: a backfill
    in many batches runs exactly the queries of a backfill in one."""
    queries: list[str] = []
    read = engine.read_sources

    def counting(con, sql: str) -> pl.DataFrame:
        queries.append(sql)
        return read(con, sql)

    monkeypatch.setattr(engine, "read_sources", counting)
    dates = _dates(raw)
    list(feature_batches(family, raw, [dates]))
    in_one = list(queries)
    queries.clear()
    list(feature_batches(family, raw, [[d] for d in dates]))
    assert len(in_one) >= 2  # the sale runs and the deltas at least
    assert queries == in_one


def test_batches_must_come_in_date_order(raw: dict[str, pl.DataFrame]) -> None:
    dates = _dates(raw)
    with pytest.raises(ValueError, match="increasing order"):
        list(feature_batches("sales", raw, [dates[5:], dates[:5]]))


def test_empty_batches_keep_the_schema(raw: dict[str, pl.DataFrame]) -> None:
    dates = _dates(raw)
    frames = list(feature_batches("payments", raw, [[], dates[:2], []]))
    assert [f.height == 0 for f in frames] == [True, False, True]
    assert all(f.schema == frames[1].schema for f in frames)


def test_active_seller_counts_match_the_spine(raw: dict[str, pl.DataFrame]) -> None:
    dates = _dates(raw)
    spine = active_sellers(raw["orders"], raw["order_items"], dates)
    per_date = dict(spine.group_by("reference_date").len().iter_rows())
    counts = active_seller_counts(sale_items(raw["orders"], raw["order_items"]), dates)
    assert counts == [per_date.get(d, 0) for d in dates]
    assert max(counts) > 0


def test_a_backfill_cuts_its_dates_into_batches_sized_by_the_busiest_date(
    raw: dict[str, pl.DataFrame],
) -> None:
    dates = _dates(raw)
    shared = Backfill(raw, list(reversed(dates)))
    assert shared.active_counts == active_seller_counts(
        sale_items(raw["orders"], raw["order_items"]), dates
    )
    busiest = max(shared.active_counts)
    batches = shared.batches(max_rows=8 * busiest)  # a batch holds at least 7 dates
    assert [d for batch in batches for d in batch] == dates
    assert len(batches) > 1
    assert [len(batch) for batch in batches[:-1]] == [8] * (len(batches) - 1)
    with pytest.raises(ValueError, match="at least one reference date"):
        Backfill(raw, [])


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_a_shared_backfill_gives_the_same_rows(raw: dict[str, pl.DataFrame], family: str) -> None:
    """What the families share (`Backfill`: seller ranks, sale runs) changes no row: in
    batches, with ranks that lack a seller of the family's tables (a seller without
    sales, ranked only by the customers family, which then ranks its own), and with a
    backfill built for other dates (ignored)."""
    sellers = raw["sellers"]
    extra = sellers.head(1).with_columns(seller_id=pl.lit("f" * 32))
    raw = {**raw, "sellers": pl.concat([sellers, extra])}
    dates = _dates(raw)
    alone = compute_features(family, raw, dates)
    shared = Backfill(raw, dates)
    assert shared.runs.runs.height > 0
    batches = _split(dates, [3, 1, 5])
    in_batches = pl.concat(list(feature_batches(family, raw, batches, shared=shared)))
    in_batches = in_batches.sort(ROW_ORDER)
    assert_frame_equal(in_batches, alone, check_exact=True)
    # as the first family of a backfill builds it when it reads no sellers table
    narrow = Backfill({t: f for t, f in raw.items() if t != "sellers"}, dates)
    assert narrow.ids.len() == shared.ids.len() - 1
    assert_frame_equal(compute_features(family, raw, dates, shared=narrow), alone, check_exact=True)
    other = Backfill(raw, dates[1:])
    assert_frame_equal(compute_features(family, raw, dates, shared=other), alone, check_exact=True)


def test_a_shared_backfill_is_used_when_it_fits(
    raw: dict[str, pl.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The families of a backfill stage the spine's tables and rank the sellers once, not
    once each: with the shared backfill, no family ranks its own sellers nor stages the
    sale days."""
    dates = _dates(raw)
    shared = Backfill(raw, dates)
    staged: list[str] = []
    ranked: list[int] = []
    stage = engine.stage_ctes

    def spy_stage(con, ctes):
        ctes = list(ctes)
        staged.extend(c.name for c in ctes)
        return stage(con, ctes)

    rank = features_package._integer_sellers
    monkeypatch.setattr(engine, "stage_ctes", spy_stage)
    monkeypatch.setattr(
        features_package, "_integer_sellers", lambda frames: (ranked.append(1), rank(frames))[1]
    )
    for family in FEATURE_FAMILIES:
        compute_features(family, raw, dates, shared=shared)
    assert not ranked
    assert "sale_days" not in staged and "seller_keys" not in staged
    compute_features("sales", raw, dates)
    assert ranked == [1] and "sale_days" in staged
