from datetime import date

import polars as pl

from olist_churn_dagster.lib.ml.consistency import feature_mismatches

DAY = date(2025, 3, 1)


def _rows(values: list[float | None], counts: list[int | None]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "reference_date": [DAY] * len(values),
            "seller_id": [f"s{i}" for i in range(len(values))],
            "x": values,
            "n": counts,
        },
        schema_overrides={"x": pl.Float64, "n": pl.Int64},
    )


def test_equal_tables_have_no_mismatch():
    rows = _rows([1.0, None, 3.0], [1, 2, None])
    assert feature_mismatches(rows, rows).height == 0


def test_differences_nulls_and_missing_rows_are_reported():
    stored = _rows([1.0, None, 3.0, 4.0], [1, 2, None, 5])
    recomputed = _rows([1.0 + 1e-12, 0.5, 3.0], [1, 2, 7])
    found = feature_mismatches(stored, recomputed).sort("seller_id", "feature")
    assert found.select("seller_id", "feature").rows() == [
        ("s1", "x"),  # null vs 0.5
        ("s2", "n"),  # null vs 7
        ("s3", "n"),  # row missing from the recomputation
        ("s3", "x"),
    ]
