"""The pyfunc in process: built from its artifact files as MLflow loads it, it scores a
feature row as `score_sellers` (what ml/churn_scores writes) does. The real `mlflow models
serve` process is tested on the pipeline's own champion in defs/test_ml_assets.py."""

from datetime import date, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import xgboost as xgb

from olist_churn_dagster.lib.ml.calibration import Calibrator
from olist_churn_dagster.lib.ml.pyfunc import (
    OUTPUT_COLUMNS,
    ChurnModel,
    code_package,
    optional_columns,
    served_scores,
    write_artifacts,
)
from olist_churn_dagster.lib.ml.scoring import REVENUE_FEATURE, score_sellers

# Catalogue features, so reasons read as the catalogue's sentences (one names three others).
FEATURES = [
    "sales_recency_days",
    "sales_mean_gap_days",
    "sales_std_gap_days",
    "sales_orders_30d",
    "rhythm_recency_over_gap",
    "reviews_score_mean",
    REVENUE_FEATURE,
]
PLATT = Calibrator("platt", (1.1, 1.1, -0.2))


@pytest.fixture(scope="module")
def case() -> tuple[xgb.Booster, pl.DataFrame]:
    rng = np.random.default_rng(11)
    n = 1200
    recency = rng.integers(0, 45, n)
    gap = rng.gamma(2.0, 4.0, n)
    frame = pl.DataFrame(
        {
            "reference_date": [date(2026, 3, 1 + i % 2) for i in range(n)],
            "seller_id": [f"s{i}" for i in range(n)],
            "sales_recency_days": recency,  # integers, as in the feature store
            "sales_mean_gap_days": gap,
            "sales_std_gap_days": gap * rng.uniform(0.2, 1.5, n),
            "sales_orders_30d": rng.poisson(3.0, n),
            "rhythm_recency_over_gap": recency / gap,
            "reviews_score_mean": pl.Series(rng.uniform(1, 5, n)).set(
                pl.Series(rng.random(n) < 0.2), None
            ),
            REVENUE_FEATURE: rng.gamma(2.0, 400.0, n),
        }
    )
    logit = 0.15 * (recency / gap - 3) - 0.4 * frame["sales_orders_30d"].to_numpy()
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    matrix = xgb.DMatrix(
        frame.select(FEATURES).to_numpy(), label=label, feature_names=FEATURES, missing=np.nan
    )
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, matrix, 40)
    return booster, frame


def loaded_model(booster: xgb.Booster, folder: Path) -> ChurnModel:
    """The pyfunc as MLflow builds it: from its artifact files."""
    model = ChurnModel()
    model.load_context(SimpleNamespace(artifacts=write_artifacts(booster, FEATURES, PLATT, folder)))
    return model


def test_a_served_row_scores_and_reads_as_in_the_score_table(case, tmp_path: Path):
    booster, frame = case
    table = score_sellers(
        booster,
        FEATURES,
        frame,
        model_version="1",
        model_alias="champion",
        scored_at=datetime(2026, 3, 3),
        calibrator=PLATT,
    )
    rows = frame.with_columns(pl.col("reference_date").cast(pl.String)).to_pandas()
    served = pl.from_pandas(loaded_model(booster, tmp_path).predict(None, rows))
    assert served.columns == ["reference_date", "seller_id", *OUTPUT_COLUMNS]
    assert served.get_column("seller_id").to_list() == frame.get_column("seller_id").to_list()
    both = table.with_columns(pl.col("reference_date").cast(pl.String)).join(
        served, on=["reference_date", "seller_id"], suffix="_served"
    )
    assert both.height == frame.height
    same = ["model_score", "churn_probability", "risk_band", "sales_at_risk"]
    for column in same:
        assert both[column].equals(both[f"{column}_served"]), column
    explained = both.filter(pl.col("reasons").is_not_null())
    assert 0 < explained.height < both.height  # the table explains its risky rows only
    reason_columns = [c for c in OUTPUT_COLUMNS if c.startswith("reason")]
    for column in reason_columns:
        assert explained[column].equals(explained[f"{column}_served"]), column
    assert "usual gap" in " ".join(explained.get_column("reasons").to_list())  # sentences
    # The served model explains every row: reasons wherever a feature raises the risk.
    assert served.filter(pl.col("reason_1").is_not_null())["reasons"].null_count() == 0
    assert served["reasons"].drop_nulls().len() > explained.height


def test_a_row_without_its_keys_or_revenue_is_scored_and_a_missing_feature_named(case):
    booster, frame = case
    rows = frame.head(3).drop("reference_date", "seller_id")
    served = served_scores(booster, FEATURES, PLATT, rows)
    assert served.columns == list(OUTPUT_COLUMNS) and served.height == 3
    without = FEATURES[:-1]  # a model that does not read the revenue
    label = frame["sales_orders_30d"].to_numpy() < 3
    matrix = xgb.DMatrix(frame.select(without).to_numpy(), label=label, feature_names=without)
    small = xgb.train({"objective": "binary:logistic"}, matrix, 5)
    bare = served_scores(small, without, PLATT, rows.drop(REVENUE_FEATURE))
    assert bare.get_column("sales_at_risk").null_count() == 3
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['sales_orders_30d'\]"):
        served_scores(booster, FEATURES, PLATT, rows.drop("sales_orders_30d"))


def test_optional_columns_are_what_the_sentences_name_beyond_the_features():
    assert optional_columns(FEATURES) == []
    assert optional_columns(["sales_recency_days"]) == [
        "sales_mean_gap_days",
        "sales_orders_30d",
        REVENUE_FEATURE,
        "sales_std_gap_days",
    ]


def test_the_code_it_carries_is_the_pure_core(tmp_path: Path):
    package = Path(code_package(tmp_path))
    assert package.name == "olist_churn_dagster"
    assert (package / "lib" / "ml" / "pyfunc.py").is_file()
    assert not (package / "defs").exists() and not list(package.rglob("__pycache__"))
