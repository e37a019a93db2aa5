"""The feature computation within its DuckDB memory cap.

At scale 30 the sales family's deltas query ran out of its 1 GB: DuckDB held the CTEs it
shared between its parts in memory for the whole query. Scale 1 under a proportionally
small cap shows the same failure in a second; the CTEs are now staged as tables, which
DuckDB can spill, and the capped results must equal the uncapped ones.
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from olist_churn_dagster.generator.marketplace import generate_dataset
from olist_churn_dagster.lib import features
from olist_churn_dagster.lib.features import (
    FEATURE_FAMILIES,
    compute_features,
    engine,
    source_columns,
)
from olist_churn_dagster.lib.ingest.loader import load_dataset


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pl.DataFrame]:
    folder = tmp_path_factory.mktemp("memory") / "raw"
    generate_dataset(folder, scale=1, seed=42)
    return load_dataset(folder)


def _dates(raw: dict[str, pl.DataFrame]) -> list[date]:
    last = raw["orders"]["order_purchase_timestamp"].max().date()
    return [last - timedelta(days=i) for i in range(600)]


def test_sales_fit_a_small_memory_cap(
    raw: dict[str, pl.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    """72 MB on one thread: the old single query needed more than 90 MB at scale 1 (and
    failed at scale 30 with 1 GB); staged, it needs under 56 MB."""
    dates = _dates(raw)
    uncapped = compute_features("sales", raw, dates)
    monkeypatch.setattr(features, "COMPUTE_MEMORY_LIMIT", "72MB")
    monkeypatch.setattr(features, "COMPUTE_THREADS", 1)
    capped = compute_features("sales", raw, dates)
    assert capped.height > 100_000
    assert_frame_equal(capped, uncapped)


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_row_queries_read_staged_tables_not_ctes(
    family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No query whose rows are kept carries a WITH clause (DuckDB would hold its CTEs in
    memory, unspillable, while it runs); the staged CTEs cover every table they read."""
    plan = features.PLANS[family](180)
    ctes, queries = engine._source_queries(plan, window_days=180, horizon_days=45, lo=100, hi=200)
    staged = [c.name for c in engine.needed_ctes(ctes, engine._roots(plan, runs=True))]
    assert {"runs", "seller_keys", "sale_days"} <= set(staged)
    assert len(staged) == len(set(staged)) >= 5
    for sql in queries.values():
        assert "WITH" not in sql.upper().split()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pl.DataFrame]:
    folder = tmp_path_factory.mktemp("columns") / "raw"
    generate_dataset(folder, scale=0.1, seed=3, start=date(2017, 1, 1), end=date(2018, 6, 30))
    return load_dataset(folder)


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_only_the_source_columns_are_needed(small: dict[str, pl.DataFrame], family: str) -> None:
    """A caller may load only `source_columns`: the rows are those of the whole tables."""
    columns = source_columns(family)
    pruned = {t: small[t].select(c) for t, c in columns.items()}
    assert sum(f.width for f in pruned.values()) < sum(small[t].width for t in columns)
    dates = _dates(small)[::7]
    assert_frame_equal(
        compute_features(family, pruned, dates), compute_features(family, small, dates)
    )
