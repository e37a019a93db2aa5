from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from olist_churn_dagster.lib.ml.abt import cohort_dates
from olist_churn_dagster.lib.ml.backtest import (
    MODEL,
    RECENCY_RULE,
    SIMPLE_BASELINE,
    Recipe,
    backtest_figure,
    choose_calibration,
    gap,
    mean_table,
    run_backtest,
    walk_forward_calibration,
    walk_forward_plans,
)
from olist_churn_dagster.lib.ml.model import ModelParams, plan_time_split
from olist_churn_dagster_tests.lib.ml.test_model import synthetic_abt

FAST = ModelParams(n_estimators=200, learning_rate=0.15, early_stopping_rounds=15)
MONTHLY = cohort_dates(date(2017, 1, 1), date(2018, 12, 1))


def test_monthly_plans_match_the_training_split_gap_rule():
    plans = walk_forward_plans(MONTHLY, n_cutoffs=4, n_valid=2, horizon_days=45)
    assert [p.test[0] for p in plans] == MONTHLY[-4:]
    for plan in plans:
        upto = [d for d in MONTHLY if d <= plan.test[0]]
        assert plan == plan_time_split(upto, n_test=1, n_valid=2, gap=1, horizon_days=45)
        assert (plan.test[0] - plan.valid[-1]).days >= 45
        assert (plan.valid[0] - plan.train[-1]).days >= 45


def test_weekly_training_cohorts_keep_the_label_gap():
    weekly = [MONTHLY[0] + timedelta(days=7 * k) for k in range(100)]
    plans = walk_forward_plans(
        sorted(set(weekly) | set(MONTHLY)), n_cutoffs=3, horizon_days=45, eval_cohorts=MONTHLY
    )
    for plan in plans:
        assert plan.test[0] in MONTHLY and set(plan.valid) <= set(MONTHLY)
        assert max(plan.train) <= plan.valid[0] - timedelta(days=45)
        assert max(plan.train) > plan.valid[0] - timedelta(days=52)  # weekly rows reach close
        assert len(plan.train) > len([d for d in MONTHLY if d < plan.valid[0]])


def test_plans_drop_cutoffs_without_history_and_refuse_none():
    plans = walk_forward_plans(MONTHLY[:6], n_cutoffs=6, n_valid=2, horizon_days=45)
    # Cutoff 6 needs 2 valid + 1 gap + 1 gap + 1 train before it: only the 6th has room.
    assert [p.test[0] for p in plans] == [MONTHLY[5]]
    with pytest.raises(ValueError, match="no cutoff"):
        walk_forward_plans(MONTHLY[:4], n_cutoffs=2, horizon_days=45)
    with pytest.raises(ValueError, match="at least 1"):
        walk_forward_plans(MONTHLY, n_cutoffs=0)


@pytest.fixture(scope="module")
def abt() -> pl.DataFrame:
    return synthetic_abt(n_cohorts=12, sellers=400, seed=3)


@pytest.fixture(scope="module")
def recipes() -> dict[str, Recipe]:
    return {
        MODEL: Recipe(params=FAST),
        SIMPLE_BASELINE: Recipe(params=FAST, features=("recency_days", "noise_0")),
    }


@pytest.fixture(scope="module")
def result(abt, recipes):
    plans = walk_forward_plans(
        abt.get_column("reference_date").unique().to_list(), n_cutoffs=4, horizon_days=45
    )
    return run_backtest(abt, plans, recipes)


def test_backtest_reports_every_cutoff_and_scorer(result, abt):
    table = result.table
    # 3 scorers at the 4 cutoffs; 3 calibrations at the 2 cutoffs with a cutoff 45 days
    # or more before them to fit on.
    assert table.height == 4 * 3 + 2 * 3
    assert set(table.get_column("scorer")) == {
        MODEL,
        "model_platt",
        "model_beta",
        "model_isotonic",
        SIMPLE_BASELINE,
        RECENCY_RULE,
    }
    cutoffs = sorted(abt.get_column("reference_date").unique())[-4:]
    judged = table.filter(pl.col("scorer") == "model_beta").get_column("cutoff").to_list()
    assert judged == cutoffs[2:]
    assert result.cutoffs() == cutoffs
    per_cutoff = abt.group_by("reference_date").len()
    for row in table.filter(pl.col("scorer") == MODEL).iter_rows(named=True):
        expected = per_cutoff.filter(pl.col("reference_date") == row["cutoff"])["len"][0]
        assert row["rows"] == expected
        assert 0.5 < row["roc_auc"] <= 1.0 and 0.0 <= row["ece"] < 0.5
    assert result.scores.height == sum(
        per_cutoff.filter(pl.col("reference_date").is_in(cutoffs))["len"]
    )
    calibration = result.calibration()
    assert calibration["method"].sort().to_list() == ["beta", "isotonic", "none", "platt"]
    assert calibration["cutoffs"].to_list() == [2] * 4  # `none` on the judged cutoffs too
    assert calibration["ece"].is_sorted()
    assert result.chosen_calibration() in ("platt", "beta", "isotonic")
    raw = table.filter(pl.col("scorer") == MODEL, pl.col("cutoff").is_in(judged))
    for method in ("platt", "beta"):  # monotone: the same ranking
        mapped = table.filter(pl.col("scorer") == f"model_{method}")["roc_auc"].to_numpy()
        np.testing.assert_allclose(mapped, raw["roc_auc"].to_numpy(), atol=1e-9)
    assert result.scores.filter(pl.col("cutoff").is_in(judged))["model_beta"].null_count() == 0
    assert result.scores.filter(~pl.col("cutoff").is_in(judged))["model_beta"].null_count() > 0


def _ece_table(ece: dict[str, list[float]]) -> pl.DataFrame:
    """A backtest table of ECEs only: method -> one value per cutoff."""
    cutoffs = MONTHLY[: len(next(iter(ece.values())))]
    return pl.DataFrame(
        [
            {"cutoff": c, "scorer": MODEL if m == "none" else f"{MODEL}_{m}", "ece": e}
            for m, values in ece.items()
            for c, e in zip(cutoffs, values, strict=True)
        ]
    )


def test_the_simplest_calibration_within_the_noise_of_the_best_is_chosen():
    noisy = {
        "none": [0.030, 0.031, 0.029, 0.030],
        "platt": [0.026, 0.027, 0.021, 0.025],
        "beta": [0.025, 0.028, 0.019, 0.029],
        "isotonic": [0.022, 0.025, 0.017, 0.031],  # lowest mean, by less than the noise
    }
    assert choose_calibration(_ece_table(noisy)) == "platt"
    clear = {**noisy, "isotonic": [0.012, 0.014, 0.011, 0.013]}
    assert choose_calibration(_ece_table(clear)) == "isotonic"
    # none is the reference, never chosen over a fitted map; no fitted map: none.
    assert choose_calibration(_ece_table({**noisy, "none": [0.01] * 4})) == "platt"
    assert choose_calibration(_ece_table({"none": noisy["none"]})) == "none"


def test_calibration_at_a_cutoff_reads_no_label_of_the_45_days_before_it(result):
    """Flipping every label later than cutoff - 45 days leaves the cutoff's calibrated
    scores as they were: each method is fitted on matured earlier cutoffs only."""
    cutoff = result.cutoffs()[-1]
    scores = result.scores.select("cutoff", "seller_id", "churned", MODEL)
    flipped = scores.with_columns(
        pl.when(pl.col("cutoff") > cutoff - timedelta(days=45))
        .then(1 - pl.col("churned"))
        .otherwise(pl.col("churned"))
    )
    rows, again = walk_forward_calibration(flipped, MODEL, horizon_days=45)
    for method in ("platt", "beta", "isotonic"):
        name = f"model_{method}"
        before = result.scores.filter(pl.col("cutoff") == cutoff)[name].to_numpy()
        np.testing.assert_allclose(
            again.filter(pl.col("cutoff") == cutoff)[name].to_numpy(), before
        )
    assert {r["cutoff"] for r in rows} == set(result.cutoffs()[2:])


def test_model_with_the_signal_beats_the_weak_baseline(result):
    g = gap(result.table)
    assert g.n == 4 and g.mean > 0.05 and g.wins == 4
    assert g.ci_low < g.mean < g.ci_high
    means = mean_table(result.table)
    assert means["scorer"][0] == MODEL


@pytest.mark.parametrize("which", [0, -1])
def test_labels_at_or_after_a_cutoff_never_reach_its_training(abt, recipes, result, which):
    """Flipping every label of the cohorts whose label windows reach the cutoff (later than
    cutoff - horizon) leaves that cutoff's scores unchanged: only matured cohorts train
    and early-stop its model."""
    plan = result.plans[which]
    cutoff = plan.test[0]
    flipped = abt.with_columns(
        pl.when(pl.col("reference_date") > cutoff - timedelta(days=45))
        .then(1 - pl.col("churned"))
        .otherwise(pl.col("churned"))
        .alias("churned")
    )
    again = run_backtest(flipped, [plan], {MODEL: recipes[MODEL]}, calibrate=None)
    before = result.scores.filter(pl.col("cutoff") == cutoff).get_column(MODEL).to_numpy()
    np.testing.assert_allclose(again.scores.get_column(MODEL).to_numpy(), before, atol=1e-7)
    assert not np.array_equal(
        again.scores.get_column("churned").to_numpy(),
        result.scores.filter(pl.col("cutoff") == cutoff).get_column("churned").to_numpy(),
    )


def test_gap_mean_interval_and_direction():
    cutoffs = [date(2020, m, 1) for m in range(1, 5)]
    diffs = np.array([0.01, 0.03, 0.02, 0.04])
    table = pl.DataFrame(
        {
            "cutoff": cutoffs * 2,
            "scorer": [MODEL] * 4 + [SIMPLE_BASELINE] * 4,
            "roc_auc": [*(0.8 + diffs), *([0.8] * 4)],
            "brier": [*(0.1 - diffs), *([0.1] * 4)],
        }
    )
    g = gap(table)
    assert g.mean == pytest.approx(0.025)
    half = 3.182446305 * diffs.std(ddof=1) / 2  # t(0.975, 3) * sd / sqrt(4)
    assert (g.ci_low, g.ci_high) == pytest.approx((0.025 - half, 0.025 + half))
    assert g.min == pytest.approx(0.01) and g.wins == 4
    assert gap(table, metric="brier").mean == pytest.approx(0.025)  # lower is better
    assert "better at 4 of 4" in g.text()


def test_backtest_figure_draws_both_panels(result):
    fig = backtest_figure(result.table, gap(result.table))
    auc_ax, gap_ax = fig.axes
    assert len(auc_ax.lines) == 3
    assert len(gap_ax.patches) >= 4  # one bar per cutoff (plus the CI band)


def test_recipe_refuses_an_abt_without_its_features(abt):
    with pytest.raises(ValueError, match="none of the recipe's features"):
        Recipe(features=("not_there",)).feature_names(abt)
    names = Recipe(features=("n_orders", "not_there")).feature_names(abt)
    assert names == ["n_orders"]
    extra = Recipe(monotone={"n_orders": -1}).xgb_extra(["recency_days", "n_orders"])
    assert extra == {"monotone_constraints": "(0,-1)"}


def test_walk_forward_tuning_ranks_by_mean_cutoff_auc(abt):
    from olist_churn_dagster.lib.ml.backtest import tune_walk_forward

    plans = walk_forward_plans(
        abt.get_column("reference_date").unique().to_list(), n_cutoffs=3, horizon_days=45
    )
    best, table = tune_walk_forward(
        abt, plans, {"max_depth": [1, 3], "n_estimators": [1, 200]}, base=FAST
    )
    assert table.height == 4 and table["mean_roc_auc"].is_sorted(descending=True)
    for row in table.iter_rows(named=True):  # each candidate's own backtest rows
        assert [r["cutoff"] for r in row["per_cutoff"]] == [p.test[0] for p in plans]
        aucs = [r["roc_auc"] for r in row["per_cutoff"]]
        assert np.mean(aucs) == pytest.approx(row["mean_roc_auc"])
        assert min(aucs) == row["min_roc_auc"]
    assert (best.max_depth, best.n_estimators) == (table["max_depth"][0], table["n_estimators"][0])
    # A single depth-1 stump cannot be the best of four on a nonlinear signal.
    assert (best.max_depth, best.n_estimators) != (1, 1)
    worst = table.row(table.height - 1, named=True)
    assert worst["mean_roc_auc"] < table["mean_roc_auc"][0]
    with pytest.raises(ValueError, match="unknown parameter"):
        tune_walk_forward(abt, plans, {"depth": [3]})


def test_original_recipe_baseline_reads_the_six_families_and_recency_only():
    from olist_churn_dagster.lib.features import FEATURE_CATALOGUE
    from olist_churn_dagster.lib.ml.backtest import (
        ORIGINAL_RECIPE_FAMILIES,
        ORIGINAL_RECIPE_FEATURES,
        RECENCY_FEATURE,
        original_recipe_baseline,
    )
    from olist_churn_dagster.lib.ml.rhythm import RHYTHM_FEATURES

    assert set(ORIGINAL_RECIPE_FAMILIES) == {spec.family for spec in FEATURE_CATALOGUE}
    assert set(ORIGINAL_RECIPE_FEATURES) == {spec.name for spec in FEATURE_CATALOGUE}
    assert RECENCY_FEATURE in ORIGINAL_RECIPE_FEATURES  # days since the last sale
    assert not set(ORIGINAL_RECIPE_FEATURES) & set(RHYTHM_FEATURES)  # nothing derived
    assert not any(f.startswith("rhythm_") for f in ORIGINAL_RECIPE_FEATURES)
    assert original_recipe_baseline().features == ORIGINAL_RECIPE_FEATURES


def test_backtest_reports_the_model_over_both_baselines(abt):
    """On an ABT named as the feature store's, plus a derived column that leaks the label:
    the model reads it, the original-recipe baseline does not, and the backtest reports
    every baseline with its gaps in ROC AUC and top-decile precision."""
    from olist_churn_dagster.lib.ml.backtest import (
        BASELINES,
        ORIGINAL_RECIPE_BASELINE,
        backtest_model,
        baseline_gaps,
        original_recipe_baseline,
    )

    named = abt.rename(
        {
            "recency_days": "sales_recency_days",
            "n_orders": "sales_orders",
            "late_share": "delivery_late_share",
            "review_mean": "reviews_score_mean",
            "tenure_days": "sales_tenure_days",
        }
    ).with_columns((pl.col("churned") + pl.col("noise_0") * 0.1).alias("rhythm_recency_over_gap"))
    names = original_recipe_baseline().feature_names(named)
    assert "sales_recency_days" in names and "rhythm_recency_over_gap" not in names
    result = backtest_model(named, FAST, n_cutoffs=3, horizon_days=45)
    assert set(result.table.get_column("scorer")) >= {MODEL, *BASELINES}
    means = mean_table(result.table)
    auc = dict(zip(means["scorer"], means["roc_auc"], strict=True))
    assert auc[MODEL] > 0.99 > auc[ORIGINAL_RECIPE_BASELINE] > 0.5
    assert means["precision_top_decile"].is_between(0, 1).all()
    gaps = baseline_gaps(result.table)
    assert [(g.metric, g.baseline) for g in gaps] == [
        (m, b) for m in ("roc_auc", "precision_top_decile") for b in BASELINES
    ]
    assert all(g.n == 3 and g.mean > 0 for g in gaps if g.metric == "roc_auc")
