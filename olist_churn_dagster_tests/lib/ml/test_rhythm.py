import math

import polars as pl
import pytest

from olist_churn_dagster.lib.ml.rhythm import RHYTHM_FEATURES, add_rhythm_features


def _frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sales_recency_days": [10, 40, 5],
            "sales_mean_gap_days": [2.0, 30.0, None],
            "sales_std_gap_days": [1.0, 0.0, None],
            "sales_active_days": [90, 6, 1],
            "sales_tenure_days": [400, 179, 5],
            "sales_orders": [120, 6, 1],
            "sales_orders_30d": [0, 1, 1],
        }
    )


def test_rhythm_features_by_hand():
    out = add_rhythm_features(_frame(), horizon_days=45, window_days=180)
    assert set(RHYTHM_FEATURES) <= set(out.columns)
    first, second, third = out.iter_rows(named=True)
    # daily seller silent 10 days: 5 gaps long, z = (10 - 2) / 1
    assert first["rhythm_recency_over_gap"] == pytest.approx(5.0)
    assert first["rhythm_recency_z"] == pytest.approx(8.0)
    assert first["rhythm_active_day_rate"] == pytest.approx(90 / 180)
    assert first["rhythm_p_no_sale_left"] == pytest.approx(math.exp(-0.5 * 35))
    assert first["rhythm_p_no_sale_left_30d"] == pytest.approx(1.0)  # no orders lately
    assert first["rhythm_orders_30d_vs_window"] == pytest.approx(0.0)
    # monthly seller silent 40 days: window span is tenure + 1 = 180
    assert second["rhythm_recency_over_gap"] == pytest.approx(40 / 30)
    assert second["rhythm_recency_z"] is None  # no spread in the gaps
    assert second["rhythm_p_no_sale_left"] == pytest.approx(math.exp(-(6 / 180) * 5))
    assert second["rhythm_orders_30d_vs_window"] == pytest.approx(1 / (6 * 30 / 180))
    # single sale day: no gap, so no gap ratios
    assert third["rhythm_recency_over_gap"] is None
    assert third["rhythm_active_day_rate"] == pytest.approx(1 / 6)


def test_rhythm_needs_the_sales_columns():
    with pytest.raises(ValueError, match="sales_orders_30d"):
        add_rhythm_features(_frame().drop("sales_orders_30d"))


def test_model_frame_joins_the_tables_and_adds_rhythm():
    from datetime import date

    from olist_churn_dagster.lib.ml.rhythm import model_frame

    sales = _frame().with_columns(
        pl.lit(date(2026, 1, 1)).alias("reference_date"),
        pl.Series("seller_id", ["a", "b", "c"]),
    )
    reviews = sales.select("reference_date", "seller_id", pl.lit(4.5).alias("reviews_score_mean"))
    frame = model_frame({"sales": sales, "reviews": reviews})
    assert frame.height == 3 and "reviews_score_mean" in frame.columns
    assert set(RHYTHM_FEATURES) <= set(frame.columns)
    expected = add_rhythm_features(sales).sort("seller_id")
    assert frame.sort("seller_id")["rhythm_p_no_sale_left"].to_list() == pytest.approx(
        expected["rhythm_p_no_sale_left"].to_list()
    )
