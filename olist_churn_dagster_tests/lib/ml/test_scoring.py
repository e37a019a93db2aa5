from datetime import date, datetime

import numpy as np
import polars as pl
import pytest
import xgboost as xgb

from olist_churn_dagster.lib.ml.model import top_reasons
from olist_churn_dagster.lib.ml.scoring import (
    REASONS_FOR_TOP_SALES_AT_RISK,
    REASONS_FROM_PROBABILITY,
    export_per_date,
    reasons_in_words,
    score_sellers,
)

FEATURES = ["sales_revenue", "recency_days", "n_orders", "late_share"]


def _score(booster, frame: pl.DataFrame, **options) -> pl.DataFrame:
    """The scores of version 7 (champion) at one fixed time."""
    return score_sellers(
        booster,
        FEATURES,
        frame,
        model_version="7",
        model_alias="champion",
        scored_at=datetime(2026, 3, 4, 3, 0),
        **options,
    )


@pytest.fixture(scope="module")
def scored() -> tuple[xgb.Booster, pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(3)
    n = 3000
    frame = pl.DataFrame(
        {
            "reference_date": [date(2026, 3, 1 + i % 3) for i in range(n)],
            "seller_id": [f"s{i}" for i in range(n)],
            "sales_revenue": rng.gamma(2.0, 300.0, n),
            "recency_days": rng.integers(0, 60, n).astype(float),
            "n_orders": rng.poisson(5.0, n).astype(float),
            "late_share": rng.beta(1.5, 5.0, n),
        }
    )
    logit = 0.08 * (frame["recency_days"].to_numpy() - 30) - 0.3 * frame["n_orders"].to_numpy()
    label = (rng.random(n) < 1 / (1 + np.exp(-(logit + 1.0)))).astype(int)
    matrix = xgb.DMatrix(frame.select(FEATURES).to_numpy(), label=label, feature_names=FEATURES)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, matrix, 30)
    return booster, frame, _score(booster, frame)


def test_one_row_per_seller_and_date_ranked_densely(scored):
    _, frame, scores = scored
    assert scores.height == frame.height
    assert scores.select("reference_date", "seller_id").is_duplicated().sum() == 0
    for _, day in scores.group_by("reference_date"):
        ranks = day.sort("churn_probability", descending=True).get_column("risk_rank")
        assert ranks.diff().drop_nulls().is_in([0, 1]).all()
        assert ranks[0] == 1


def test_bands_and_sales_at_risk_follow_the_probability(scored):
    _, frame, scores = scored
    p = pl.col("churn_probability")
    expected = pl.when(p >= 0.5).then(pl.lit("high")).when(p >= 0.25).then(pl.lit("medium"))
    assert scores.select((pl.col("risk_band") == expected.otherwise(pl.lit("low"))).all()).item()
    # Sales at risk is the input's trailing revenue (not the output's own column) x the
    # probability, seller by seller.
    joined = scores.join(
        frame.select("reference_date", "seller_id", "sales_revenue"),
        on=["reference_date", "seller_id"],
        how="left",
    )
    assert joined.height == frame.height
    assert joined.get_column("sales_revenue").null_count() == 0
    revenue = joined.get_column("sales_revenue").to_numpy()
    probability = joined.get_column("churn_probability").to_numpy()
    assert np.allclose(joined.get_column("trailing_revenue").to_numpy(), revenue)
    assert np.allclose(joined.get_column("sales_at_risk").to_numpy(), revenue * probability)
    assert scores.get_column("risk_band").n_unique() == 3  # the fixture spans every band


def test_reasons_for_medium_and_high_risk_and_the_top_sales_at_risk(scored):
    booster, frame, scores = scored
    top = pl.col("sales_at_risk").rank("ordinal", descending=True).over("reference_date")
    scores = scores.with_columns((top <= REASONS_FOR_TOP_SALES_AT_RISK).alias("top"))
    explained = (pl.col("churn_probability") >= REASONS_FROM_PROBABILITY) | pl.col("top")
    low = scores.filter(~explained)
    at_risk = scores.filter(explained).drop("top")
    assert low.height and at_risk.height
    reason_columns = [c for c in scores.columns if c.startswith("reason_")]
    assert low.select(pl.all_horizontal(pl.col(reason_columns).is_null())).to_series().all()
    # An at-risk row can still lack a reason when no feature raises its risk above the base.
    assert at_risk.get_column("reason_1").null_count() < at_risk.height / 10

    # The reasons of the at-risk rows are exactly those of the whole frame's TreeSHAP.
    full = top_reasons(booster, frame, FEATURES, k=3)
    joined = at_risk.join(full, on=["reference_date", "seller_id"], suffix="_full")
    assert joined.height == at_risk.height
    for i in (1, 2, 3):
        assert joined.select(
            pl.col(f"reason_{i}").eq_missing(pl.col(f"reason_{i}_full")).all()
        ).item()
        assert np.allclose(
            joined.get_column(f"reason_{i}_contribution").fill_null(0).to_numpy(),
            joined.get_column(f"reason_{i}_contribution_full").fill_null(0).to_numpy(),
        )


def test_the_top_sales_at_risk_get_reasons_in_the_low_band_too(scored):
    booster, frame, scores = scored
    low = scores.filter(pl.col("risk_band") == "low").head(4).select("seller_id")
    rich = frame.with_columns(  # low risk, but the largest sales: on the digest's top list
        pl.when(pl.col("seller_id").is_in(low.get_column("seller_id").implode()))
        .then(pl.col("sales_revenue") * 1e4)
        .otherwise(pl.col("sales_revenue"))
    )
    top = pl.col("sales_at_risk").rank("ordinal", descending=True).over("reference_date")
    rescored = _score(booster, rich).filter(
        (top <= REASONS_FOR_TOP_SALES_AT_RISK) & (pl.col("risk_band") == "low")
    )
    assert rescored.height  # revenue is a feature too: some of the four stay low
    assert rescored.get_column("reason_1").null_count() == 0


def test_calibrator_maps_probabilities_and_keeps_the_ranking(scored):
    from olist_churn_dagster.lib.ml.calibration import Calibrator

    booster, frame, scores = scored
    shifted = _score(booster, frame, calibrator=Calibrator(method="platt", platt=(1.0, -1.0)))
    keys = ["reference_date", "seller_id"]
    joined = scores.join(shifted, on=keys, suffix="_cal")
    raw = joined.get_column("churn_probability").to_numpy()
    cal = joined.get_column("churn_probability_cal").to_numpy()
    expected = 1 / (1 + np.exp(-(np.log(raw / (1 - raw)) - 1.0)))
    np.testing.assert_allclose(cal, expected, rtol=1e-5)
    assert (cal < raw).all()
    assert (joined["risk_rank"] == joined["risk_rank_cal"]).all()
    assert (shifted["risk_band"] == "high").sum() < (scores["risk_band"] == "high").sum()


def test_export_per_date_writes_one_csv_per_date(tmp_path):
    scores = pl.DataFrame(
        {
            "reference_date": [date(2018, 2, 1), date(2018, 1, 1), date(2018, 2, 1)],
            "seller_id": ["a", "b", "c"],
            "churn_probability": [0.1, 0.2, 0.3],
        }
    )
    folder = tmp_path / "exports" / "churn_scores"
    paths = export_per_date(scores, folder)
    assert [p.name for p in paths] == ["2018-01-01.csv", "2018-02-01.csv"]
    assert pl.read_csv(paths[1]).get_column("seller_id").to_list() == ["a", "c"]
    assert not list(folder.glob("*.tmp"))


def _reasons(rows: list[list[tuple[str | None, float | None]]]) -> list[str | None]:
    """reasons_in_words of rows of (feature, value) reasons, three per row."""
    columns: dict[str, list] = {}
    for i in range(3):
        columns[f"reason_{i + 1}"] = [row[i][0] for row in rows]
        columns[f"reason_{i + 1}_value"] = [row[i][1] for row in rows]
    frame = pl.DataFrame(
        columns, schema={k: pl.Float64 if k.endswith("value") else pl.String for k in columns}
    )
    return frame.select(reasons_in_words()).get_column("reasons").to_list()


def test_reasons_in_words_use_the_catalogue_meaning_and_unit():
    none: tuple[None, None] = (None, None)
    assert _reasons(
        [
            [
                ("sales_recency_days", 31.0),
                ("delivery_cancel_share", 0.125),
                ("sales_revenue", 1234.5),
            ],
            [
                ("products_weight_mean", 850.0),
                ("sales_orders_30d", 2.0),
                ("sales_mean_gap_days", None),
            ],
            [("rhythm_recency_over_gap", 4 / 3), ("delivery_days_ahead_of_promise", -3.456), none],
            [("sales_trend_30d", 0.5), none, none],
            [none, none, none],
        ]
    ) == [
        "days since the last sale day: 31; share of orders canceled: 12.5%; "
        "sum of item prices sold: R$ 1234.50",
        # a unit beside the number; a 30-day window named; a null remark dropped
        "mean product weight: 850 g; orders with a sale in the last 30 days: 2; "
        "mean gap between consecutive sale days: none",
        # no catalogue entry: the feature's name
        "rhythm_recency_over_gap: 1.33; "
        "mean days between delivery and the estimated date (positive = early): -3.46",
        "orders of the last 30 days over the monthly (30-day) average of the rest of the "
        "window: 0.5",
        None,  # low risk: no reasons
    ]


def test_scores_are_the_same_on_one_thread_or_several(scored, monkeypatch):
    """Scoring runs on every core; rows are independent, so nothing may change."""
    booster, frame, scores = scored
    config = booster.save_config()
    monkeypatch.setattr("olist_churn_dagster.lib.ml.scoring.SCORING_THREADS", 1)
    one = _score(booster, frame)
    monkeypatch.setattr("olist_churn_dagster.lib.ml.scoring.SCORING_THREADS", 4)
    assert _score(booster, frame).equals(one)
    assert one.equals(scores)
    assert booster.save_config() == config  # the caller's booster keeps its settings
