from datetime import date

import numpy as np
import polars as pl
import pytest
import xgboost as xgb

from olist_churn_dagster.lib.ml.abt import cohort_dates
from olist_churn_dagster.lib.ml.model import (
    ModelParams,
    SplitPlan,
    baseline_scores,
    evaluate_scores,
    feature_matrix,
    plan_time_split,
    predict,
    split_frames,
    top_reasons,
    train_churn_model,
    tune_params,
)

FAST = ModelParams(n_estimators=300, learning_rate=0.1, early_stopping_rounds=20)


def synthetic_abt(
    n_cohorts: int = 15, sellers: int = 300, n_noise: int = 4, seed: int = 0
) -> pl.DataFrame:
    """An ABT-like frame with a planted nonlinear churn signal and a weak recency signal."""
    rng = np.random.default_rng(seed)
    dates = cohort_dates(date(2017, 1, 1), date(2030, 1, 1))[:n_cohorts]
    n = n_cohorts * sellers
    orders = rng.poisson(6.0, n) + rng.integers(0, 2, n)
    late = rng.beta(1.5, 6.0, n)
    review = np.clip(rng.normal(4.1, 0.8, n), 1.0, 5.0)
    reviewed = rng.random(n) > 0.2
    tenure = rng.integers(10, 900, n)
    recency = rng.integers(0, 46, n)
    logit = (
        0.6
        - 1.0 * np.log1p(orders)
        + 1.8 * (late > 0.3)
        - 0.9 * np.where(reviewed, review - 4.1, -0.6)
        + 1.2 * ((tenure < 120) & (orders < 5))
        + 0.012 * (recency - 22)
    )
    churned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    frame = pl.DataFrame(
        {
            "reference_date": np.repeat(np.array(dates, dtype="datetime64[D]"), sellers),
            "seller_id": [f"s{i % (sellers * 2)}" for i in range(n)],
            "recency_days": recency,
            "n_orders": orders,
            "late_share": late,
            "review_mean": pl.Series(np.where(reviewed, review, np.nan)).fill_nan(None),
            "tenure_days": tenure,
            **{f"noise_{j}": rng.normal(size=n) for j in range(n_noise)},
            "churned": churned,
        }
    )
    return frame.with_columns(pl.col("reference_date").cast(pl.Date))


@pytest.fixture(scope="module")
def abt() -> pl.DataFrame:
    return synthetic_abt()


@pytest.fixture(scope="module")
def plan(abt: pl.DataFrame) -> SplitPlan:
    return plan_time_split(abt["reference_date"].unique().to_list())


@pytest.fixture(scope="module")
def result(abt, plan):
    return train_churn_model(abt, plan, FAST)


def test_plan_orders_blocks_and_leaves_gaps(plan):
    dates = cohort_dates(date(2017, 1, 1), date(2018, 3, 1))
    assert plan.test == dates[-3:]
    assert plan.valid == dates[-6:-4]
    assert plan.train == dates[:-7]
    assert max(plan.train) < min(plan.valid) < max(plan.valid) < min(plan.test)
    # The dropped cohorts keep a train label horizon (45 d) away from validation rows.
    assert (min(plan.valid) - max(plan.train)).days >= 45
    assert (min(plan.test) - max(plan.valid)).days >= 45


def test_plan_refuses_too_few_cohorts_and_too_small_gap():
    dates = cohort_dates(date(2017, 1, 1), date(2017, 7, 1))
    with pytest.raises(ValueError, match=r"7 mature cohort.*need at least 8"):
        plan_time_split(dates)
    with pytest.raises(ValueError, match="raise `gap`"):
        plan_time_split(dates, gap=0)
    assert plan_time_split(dates, n_test=2).train == dates[:1]


def test_model_beats_recency_rule_and_metrics_are_sane(result, plan):
    m, recency, base = (
        result.metrics,
        result.baselines["recency_rule"],
        result.baselines["base_rate"],
    )
    assert m["roc_auc"] > recency["roc_auc"] + 0.1, (m, recency)
    assert m["roc_auc"] > 0.7
    assert m["pr_auc"] > recency["pr_auc"]
    assert m["brier"] < base["brier"] < recency["brier"]
    assert m["lift_top_decile"] > 1.5
    assert base["roc_auc"] == pytest.approx(0.5)
    assert base["lift_top_decile"] == pytest.approx(1.0)
    for metrics in (m, recency, base, result.valid_metrics):
        for name in ("roc_auc", "pr_auc", "brier", "precision_top_decile", "base_rate", "ece"):
            assert 0.0 <= metrics[name] <= 1.0, name
        assert metrics["log_loss"] > 0
    assert m["ece"] < 0.1
    assert 0 < result.best_iteration < FAST.n_estimators
    assert result.booster.num_boosted_rounds() == result.best_iteration + 1
    assert result.test_frame.columns == ["reference_date", "seller_id", "churned", "score"]
    assert set(result.test_frame["reference_date"].unique()) == set(plan.test)
    assert result.n_rows == {"train": 8 * 300, "valid": 2 * 300, "test": 3 * 300}
    assert set(result.figures) == {"roc_pr", "calibration", "lift", "importance"}
    top_gain = result.importance["feature"].head(4).to_list()
    assert not any(f.startswith("noise") for f in top_gain)
    assert result.importance["gain"].sum() == pytest.approx(1.0)


def test_test_cohorts_never_reach_training_or_tuning(abt, plan, result):
    """Scrambling the test cohorts' labels and features must change nothing but the report."""
    rng = np.random.default_rng(1)
    is_test = pl.col("reference_date").is_in(plan.test)
    scrambled = abt.with_columns(
        pl.when(is_test).then(1 - pl.col("churned")).otherwise(pl.col("churned")).alias("churned"),
        pl.when(is_test)
        .then(pl.Series(rng.normal(size=abt.height)))
        .otherwise(pl.col("n_orders"))
        .alias("n_orders"),
    )
    again = train_churn_model(scrambled, plan, FAST)
    assert again.best_iteration == result.best_iteration
    assert again.valid_metrics == result.valid_metrics
    assert again.metrics != result.metrics
    grid = {"max_depth": [2, 3], "min_child_weight": [1.0, 10.0]}
    best, table = tune_params(abt, plan, grid, base=FAST)
    best2, table2 = tune_params(scrambled, plan, grid, base=FAST)
    assert best == best2
    assert table.drop("seconds").equals(table2.drop("seconds"))
    assert table.height == 4
    assert table["valid_roc_auc"].is_sorted(descending=True)
    assert (best.max_depth, best.min_child_weight) == (
        table["max_depth"][0],
        table["min_child_weight"][0],
    )
    with pytest.raises(ValueError, match="unknown parameter"):
        tune_params(abt, plan, {"depth": [1]})


def test_reloaded_booster_predicts_identically(result, abt, plan):
    rows = split_frames(abt, plan)["test"]
    raw = result.booster.save_raw("json")
    reloaded = xgb.Booster(model_file=bytearray(raw))
    assert reloaded.feature_names == result.feature_names
    first = predict(result.booster, rows, result.feature_names)
    np.testing.assert_array_equal(first, predict(reloaded, rows, result.feature_names))
    np.testing.assert_array_equal(first, result.test_frame["score"].to_numpy().astype(np.float32))
    # Column order in the frame does not matter: features are taken by name.
    np.testing.assert_array_equal(
        first, predict(reloaded, rows.select(reversed(rows.columns)), result.feature_names)
    )
    with pytest.raises(ValueError, match="lacks model feature"):
        predict(reloaded, rows.drop("late_share"), result.feature_names)
    # In-place prediction gives what a DMatrix gives, to the bit, and checks the names.
    through_dmatrix = result.booster.predict(
        xgb.DMatrix(feature_matrix(rows, result.feature_names), feature_names=result.feature_names)
    )
    np.testing.assert_array_equal(first.view(np.uint32), through_dmatrix.view(np.uint32))
    with pytest.raises(ValueError, match="differ from"):
        predict(reloaded, rows, list(reversed(result.feature_names)))


def test_top_reasons_are_distinct_sorted_and_match_contributions(result, abt, plan):
    rows = split_frames(abt, plan)["test"]
    reasons = top_reasons(result.booster, rows, result.feature_names, k=3)
    assert reasons.height == rows.height
    assert reasons.columns[:2] == ["reference_date", "seller_id"]
    names = reasons.select("reason_1", "reason_2", "reason_3").to_numpy()
    contrib = reasons.select(f"reason_{i}_contribution" for i in (1, 2, 3)).to_numpy()
    risky = reasons.filter(pl.col("reason_3").is_not_null())
    assert risky.height > rows.height / 2
    full = ~np.any(names == None, axis=1)  # noqa: E711 (elementwise on an object array)
    assert all(len(set(r)) == 3 for r in names[full])
    assert np.all(np.diff(contrib[full], axis=1) <= 0)
    assert np.all(contrib[full] > 0)
    # The reported value is the seller's own value of that feature.
    first = reasons.join(rows, on=["reference_date", "seller_id"]).row(0, named=True)
    assert first["reason_1_value"] == pytest.approx(first[first["reason_1"]]) or (
        first["reason_1_value"] is None and first[first["reason_1"]] is None
    )
    # Reason 1 really is the largest contribution (check against xgboost directly).
    dm = xgb.DMatrix(
        rows.select(result.feature_names).cast(pl.Float32).to_numpy(),
        feature_names=result.feature_names,
    )
    shap = result.booster.predict(dm, pred_contribs=True)[:, :-1]
    np.testing.assert_allclose(contrib[full, 0], shap.max(axis=1)[full], rtol=1e-6)
    # Edge cases: no rows, and more slots asked for than there are features.
    empty = top_reasons(result.booster, rows.head(0), result.feature_names)
    assert empty.height == 0 and empty.columns == reasons.columns
    every = top_reasons(result.booster, rows, result.feature_names, k=50)
    assert every.width == 2 + 3 * len(result.feature_names)
    assert (every["reason_1"] == reasons["reason_1"]).all()


def test_evaluate_scores_matches_reference_implementation():
    # The ranking metrics are scikit-learn's own (test_metric_definitions.py checks them
    # against their definitions); Brier and log loss are numpy, checked against it here.
    from sklearn import metrics as metrics_mod

    rng = np.random.default_rng(3)
    y = (rng.random(2000) < 0.3).astype(int)
    s = np.round(np.clip(0.3 + 0.25 * (y - 0.3) + rng.normal(0, 0.2, 2000), 0, 1), 2)  # ties
    m = evaluate_scores(y, s)
    assert m["roc_auc"] == pytest.approx(metrics_mod.roc_auc_score(y, s))
    assert m["pr_auc"] == pytest.approx(metrics_mod.average_precision_score(y, s))
    assert m["brier"] == pytest.approx(metrics_mod.brier_score_loss(y, s))
    assert m["log_loss"] == pytest.approx(metrics_mod.log_loss(y, np.clip(s, 1e-15, 1 - 1e-15)))
    assert m["base_rate"] == pytest.approx(y.mean())
    top = np.argsort(-s, kind="stable")[:200]
    assert m["precision_top_decile"] == pytest.approx(y[top].mean(), abs=0.03)
    assert m["lift_top_decile"] == pytest.approx(m["precision_top_decile"] / y.mean())
    perfect = evaluate_scores(np.array([0, 0, 1, 1]), np.array([0.0, 0.0, 1.0, 1.0]))
    assert perfect["roc_auc"] == 1.0 and perfect["ece"] == 0.0 and perfect["brier"] == 0.0
    off = evaluate_scores(np.array([0, 0, 0, 0]), np.array([0.5, 0.5, 0.5, 0.5]))
    assert off["ece"] == pytest.approx(0.5)
    assert np.isnan(off["roc_auc"])


def test_baselines_scale_recency_and_use_train_rate():
    frame = pl.DataFrame({"recency_days": [0, 10, None, 40]})
    scores = baseline_scores(frame, train_base_rate=0.2)
    np.testing.assert_allclose(scores["recency_rule"], [0.0, 0.25, 1.0, 1.0])
    np.testing.assert_allclose(scores["base_rate"], [0.2] * 4)
    # The feature store's name is found too, and an explicit column wins.
    store = pl.DataFrame({"sales_recency_days": [5, 1], "other": [0, 9]})
    np.testing.assert_allclose(baseline_scores(store, train_base_rate=0.1)["recency_rule"], [1, 0])
    named = baseline_scores(store, train_base_rate=0.1, recency_column="other")
    np.testing.assert_allclose(named["recency_rule"], [0, 1])
    with pytest.raises(ValueError, match="recency_days"):
        baseline_scores(pl.DataFrame({"x": [1]}), train_base_rate=0.1)
