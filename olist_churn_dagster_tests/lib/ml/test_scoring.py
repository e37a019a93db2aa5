from datetime import date, datetime

import numpy as np
import polars as pl
import pytest
import xgboost as xgb

from olist_churn_dagster.lib.ml.calibration import PROBABILITY_FLOOR, Calibrator
from olist_churn_dagster.lib.ml.model import top_reasons
from olist_churn_dagster.lib.ml.scoring import (
    EXPORT_COLUMNS,
    REASONS_FOR_TOP_SALES_AT_RISK,
    REASONS_FROM_PROBABILITY,
    account_manager_view,
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


def test_one_row_per_seller_and_date_ranked_densely_by_the_model_score(scored):
    booster, frame, scores = scored
    assert scores.height == frame.height
    assert scores.select("reference_date", "seller_id").is_duplicated().sum() == 0
    raw = frame.select("reference_date", "seller_id").with_columns(
        pl.Series("raw", booster.inplace_predict(frame.select(FEATURES).to_numpy()))
    )
    joined = scores.join(raw, on=["reference_date", "seller_id"])
    np.testing.assert_allclose(joined["model_score"].to_numpy(), joined["raw"].to_numpy())
    for _, day in scores.group_by("reference_date"):
        ranked = day.sort("model_score", descending=True)
        ranks = ranked.get_column("risk_rank")
        assert ranks.diff().drop_nulls().is_in([0, 1]).all()
        assert ranks[0] == 1
        # Sellers share a rank exactly when they share a score.
        assert ranks.n_unique() == ranked.get_column("model_score").n_unique()


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
    reason_columns = [c for c in scores.columns if c.startswith("reason")]
    assert "reasons" in reason_columns
    assert low.select(pl.all_horizontal(pl.col(reason_columns).is_null())).to_series().all()
    assert at_risk.get_column("reasons").null_count() == at_risk.get_column("reason_1").null_count()
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
    booster, frame, scores = scored
    shifted = _score(booster, frame, calibrator=Calibrator(method="platt", coef=(1.0, 1.0, -1.0)))
    keys = ["reference_date", "seller_id"]
    joined = scores.join(shifted, on=keys, suffix="_cal")
    raw = joined.get_column("model_score").to_numpy()
    cal = joined.get_column("churn_probability_cal").to_numpy()
    expected = 1 / (1 + np.exp(-(np.log(raw / (1 - raw)) - 1.0)))
    np.testing.assert_allclose(cal, expected.clip(PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR))
    assert (cal < joined.get_column("churn_probability").to_numpy()).all()
    assert (joined["risk_rank"] == joined["risk_rank_cal"]).all()
    assert (shifted["risk_band"] == "high").sum() < (scores["risk_band"] == "high").sum()


def test_a_calibration_in_steps_ties_probabilities_but_never_ranks(scored):
    """A step map (isotonic with two knots) gives most sellers the same probability; the
    rank still follows the model's score, so no two sellers with different scores tie."""
    booster, frame, scores = scored
    steps = Calibrator(method="isotonic", knots_x=[0.3, 0.31], knots_y=[0.0, 1.0])
    stepped = _score(booster, frame, calibrator=steps)
    assert stepped["churn_probability"].n_unique() < stepped.height / 10
    assert stepped["churn_probability"].is_between(PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR).all()
    assert stepped.select("reference_date", "seller_id", "risk_rank").equals(
        scores.select("reference_date", "seller_id", "risk_rank")
    )


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


def _reasons(
    rows: list[list[tuple[str | None, float | None]]], **context: list[float | None]
) -> list[str | None]:
    """reasons_in_words of rows of (feature, value) reasons, three per row, beside the
    `context` columns (other features of the same rows)."""
    columns: dict[str, list] = {}
    for i in range(3):
        columns[f"reason_{i + 1}"] = [row[i][0] for row in rows]
        columns[f"reason_{i + 1}_value"] = [row[i][1] for row in rows]
    frame = pl.DataFrame(
        columns, schema={k: pl.Float64 if k.endswith("value") else pl.String for k in columns}
    ).with_columns(pl.Series(name, values, dtype=pl.Float64) for name, values in context.items())
    return reasons_in_words(frame).to_list()


NONE: tuple[None, None] = (None, None)


def test_reasons_in_words_use_the_catalogue_meaning_and_unit():
    assert _reasons(
        [
            [
                ("sales_revenue", 1234.5),
                ("delivery_unavailable_share", 0.125),
                ("products_weight_mean", 850.0),
            ],
            [
                ("customers_distinct", 2.0),
                ("delivery_days_ahead_of_promise", -3.456),
                ("reviews_score_min", None),
            ],
            [("not_in_the_catalogue", 4 / 3), NONE, NONE],
            [NONE, NONE, NONE],
        ]
    ) == [
        "sum of item prices sold: R$ 1234.50; share of orders unavailable (could not be "
        "fulfilled): 12.5%; mean product weight: 850 g",
        # days to one decimal; a null remark dropped, a null value as "none"
        "distinct customers (customer_unique_id): 2; "
        "mean days between delivery and the estimated date (positive = early): -3.5; "
        "lowest review score: none",
        "not_in_the_catalogue: 1.33",  # no catalogue entry: the feature's name
        None,  # low risk: no reasons
    ]


def test_reasons_in_words_are_sentences_with_the_sellers_own_figures():
    rows = [
        [("rhythm_recency_over_gap", 31 / 3), ("rhythm_p_no_sale_left_30d", 0.953), NONE],
        [("rhythm_orders_30d_vs_window", 0.25), ("sales_orders_30d", 2.0), NONE],
        [("rhythm_recency_over_gap", None), ("rhythm_p_no_sale_left_30d", 1.0), NONE],
    ]
    context = {
        "sales_recency_days": [31.0, 5.0, 12.0],
        "sales_mean_gap_days": [3.0, 2.5, None],
        "sales_orders_30d": [1.0, 2.0, 0.0],
    }
    assert _reasons(rows, **context) == [
        "no sale for 31 days, about 10.3 times this seller's usual gap of 3 days; "
        "at its pace of the last 30 days, 95.3% chance of no new sale before it counts "
        "as churned",
        # a percentage where the template asks; a reason the sentence tells, once
        "orders in the last 30 days: 2, 25% of its usual pace",
        # a missing value in the catalogue's words; a model's chance never 100%
        "too few sale days in the window to know its usual gap between sales; "
        "at its pace of the last 30 days, over 99.9% chance of no new sale before it "
        "counts as churned",
    ]
    # Without the columns a sentence names, the reason reads "meaning: value".
    assert _reasons(rows[:1]) == [
        "days since the last sale day over the mean gap between sale days: 10.3; "
        "at its pace of the last 30 days, 95.3% chance of no new sale before it counts "
        "as churned"
    ]


def test_a_reason_told_by_another_reasons_sentence_or_said_twice_comes_once():
    context = {
        "sales_recency_days": [31.0, 40.0],
        "sales_mean_gap_days": [3.0, None],
        "sales_std_gap_days": [2.0, None],
    }
    told = [("sales_recency_days", 31.0), ("rhythm_recency_over_gap", 31 / 3)]
    missing = [("sales_mean_gap_days", None), ("sales_std_gap_days", None)]
    rows = [
        # the days without a sale and the usual gap are in the ratio's sentence
        [*told, ("sales_mean_gap_days", 3.0)],
        # two missing rhythms say the same words: once; the days stand on their own
        [*missing, ("sales_recency_days", 40.0)],
    ]
    assert _reasons(rows, **context) == [
        "no sale for 31 days, about 10.3 times this seller's usual gap of 3 days",
        "too few sale days in the window to know its usual gap between sales; no sale for 40 days",
    ]


def test_the_account_managers_view_ranks_and_explains(scored):
    _, _, scores = scored
    view = account_manager_view(scores)
    assert view.columns == list(EXPORT_COLUMNS)
    assert view.height == scores.height
    assert view["churn_probability"].is_between(PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR).all()
    assert view.filter(pl.col("risk_band") != "low")["reasons"].null_count() < view.height / 10
    # Riskiest first within each date, as the score table.
    assert view.select("reference_date", "risk_rank").equals(
        scores.select("reference_date", "risk_rank")
    )


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
