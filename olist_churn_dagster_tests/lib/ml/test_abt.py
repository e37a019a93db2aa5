from datetime import date

import polars as pl
import pytest

from olist_churn_dagster.lib.ml.abt import build_abt, cohort_dates, feature_columns

D1, D2 = date(2018, 1, 1), date(2018, 2, 1)


def _keys() -> dict:
    return {"reference_date": [D1, D1, D2, D2], "seller_id": ["a", "b", "a", "c"]}


def _tables() -> dict[str, pl.DataFrame]:
    sales = pl.DataFrame({**_keys(), "recency_days": [3, 40, 5, 1], "n_orders": [9, 1, 8, 2]})
    # Same rows in another order, with a null feature.
    reviews = pl.DataFrame(
        {
            "reference_date": [D2, D1, D2, D1],
            "seller_id": ["c", "b", "a", "a"],
            "review_mean": [5.0, None, 4.0, 3.5],
        }
    )
    return {"seller_sales": sales, "seller_reviews": reviews}


def _labels(mature: list[bool], churned: list[int | None] | None = None) -> pl.DataFrame:
    return pl.DataFrame(
        {
            **_keys(),
            "last_sale_date": [date(2017, 12, 20)] * 4,
            "churned": churned or [0, 1, 0, 1],
            "label_mature": mature,
        },
        schema_overrides={"churned": pl.Int8},
    )


def test_cohort_dates_are_monthly_within_bounds():
    assert cohort_dates(date(2017, 11, 15), date(2018, 2, 1)) == [
        date(2017, 12, 1),
        date(2018, 1, 1),
        date(2018, 2, 1),
    ]
    assert cohort_dates(date(2017, 12, 1), date(2018, 1, 31), day=15) == [
        date(2017, 12, 15),
        date(2018, 1, 15),
    ]
    assert cohort_dates(date(2017, 12, 16), date(2018, 1, 14), day=15) == []
    with pytest.raises(ValueError, match="between 1 and 28"):
        cohort_dates(D1, D2, day=31)


def test_build_abt_joins_all_tables_and_adds_label():
    abt = build_abt(_tables(), _labels([True] * 4))
    assert abt.columns == [
        "reference_date",
        "seller_id",
        "recency_days",
        "n_orders",
        "review_mean",
        "churned",
    ]
    assert abt.height == 4
    assert abt.select("reference_date", "seller_id").is_unique().all()
    row = abt.filter(pl.col("seller_id") == "c").row(0, named=True)
    assert row == {
        "reference_date": D2,
        "seller_id": "c",
        "recency_days": 1,
        "n_orders": 2,
        "review_mean": 5.0,
        "churned": 1,
    }
    assert abt.filter(pl.col("seller_id") == "b")["review_mean"].is_null().all()
    assert feature_columns(abt) == ["recency_days", "n_orders", "review_mean"]


def test_build_abt_keeps_only_mature_rows():
    labels = _labels([True, True, True, False])
    # A cohort with any immature label is dropped whole by default (biased survivors).
    abt = build_abt(_tables(), labels)
    assert abt["reference_date"].unique().to_list() == [D1]
    # Row-level filtering when asked.
    rows = build_abt(_tables(), labels, drop_partial_cohorts=False)
    assert rows.height == 3
    assert rows.filter(pl.col("reference_date") == D2)["seller_id"].to_list() == ["a"]
    # A null label is never used.
    nulls = build_abt(_tables(), _labels([True] * 4, [0, None, 0, 1]), drop_partial_cohorts=False)
    assert nulls["seller_id"].to_list() == ["a", "a", "c"]


def test_mismatched_rows_error_names_the_table():
    tables = _tables()
    tables["seller_customers"] = pl.DataFrame(
        {"reference_date": [D1, D1, D2], "seller_id": ["a", "b", "a"], "n_states": [1, 2, 3]}
    )
    with pytest.raises(ValueError, match=r"seller_customers.*1 missing"):
        build_abt(tables, _labels([True] * 4))


def test_duplicate_columns_and_rows_and_missing_labels_error():
    tables = _tables()
    tables["dup"] = pl.DataFrame({**_keys(), "n_orders": [1, 2, 3, 4]})
    with pytest.raises(ValueError, match="'n_orders' of 'dup' also comes from seller_sales"):
        build_abt(tables, _labels([True] * 4))
    tables = _tables()
    tables["seller_sales"] = pl.concat([tables["seller_sales"], tables["seller_sales"][:1]])
    with pytest.raises(ValueError, match=r"seller_sales.*duplicate"):
        build_abt(tables, _labels([True] * 4))
    with pytest.raises(ValueError, match="no label"):
        build_abt(_tables(), _labels([True] * 4)[:3])


def test_mature_cohort_dates_come_from_the_data_dates():
    from olist_churn_dagster.lib.ml.abt import mature_cohort_dates

    dates = mature_cohort_dates(date(2024, 1, 15), date(2024, 8, 20), horizon_days=45)
    # July 1: silence marks up to June 30 + 45 = Aug 14 < Aug 20; Aug 1 would reach Sep 14.
    assert dates == [date(2024, m, 1) for m in range(2, 8)]
    assert mature_cohort_dates(date(2024, 1, 15), date(2024, 2, 10), horizon_days=45) == []
