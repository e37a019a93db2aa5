"""Monitoring on generated marketplaces: a model trained before a date judges the scored
dates after it, once on the marketplace that went on as before, once on the same
marketplace whose sellers sell about a third as much from that date on
(`generator.sellers.Shift`). The drift judgement must flag every shifted date and none of
the steady ones, and the performance expected from the probabilities must drop."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from olist_churn_dagster.generator.marketplace import build_tables, load_reference
from olist_churn_dagster.generator.sellers import Shift
from olist_churn_dagster.lib.features import FEATURE_FAMILIES, compute_features
from olist_churn_dagster.lib.ml.abt import abt_from_raw, cohort_dates, feature_columns
from olist_churn_dagster.lib.ml.calibration import fit_calibrator
from olist_churn_dagster.lib.ml.model import ModelParams, fit_booster, predict
from olist_churn_dagster.lib.ml.monitoring import (
    PSI_WARN,
    drift_report,
    expected_performance,
    reference_cohorts,
)
from olist_churn_dagster.lib.ml.rhythm import add_rhythm_features, model_frame

pytestmark = pytest.mark.slow

START, END = date(2024, 1, 1), date(2025, 8, 31)
SHIFT_ON = date(2025, 6, 1)
# Scored dates after the shift, before the November holidays (a season of their own).
SCORED = [SHIFT_ON + timedelta(days=k) for k in (20, 35, 50, 65, 80)]
SCALE, SEED = 0.3, 5


def marketplace(shift: Shift | None) -> dict[str, pl.DataFrame]:
    return build_tables(
        scale=SCALE, seed=SEED, start=START, end=END, ref=load_reference(None), shift=shift
    )


def scored_frame(raw: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return model_frame({f: compute_features(f, raw, SCORED) for f in FEATURE_FAMILIES})


@pytest.fixture(scope="module")
def steady() -> dict[str, pl.DataFrame]:
    return marketplace(None)


@pytest.fixture(scope="module")
def model(steady):
    """A model of the cohorts whose labels matured before the shift, as the champion of
    that day: trained on the older ones, calibrated (Platt) on the two before the newest."""
    cohorts = [d for d in cohort_dates(date(2024, 7, 1), SHIFT_ON) if d + timedelta(46) < SHIFT_ON]
    abt = add_rhythm_features(abt_from_raw(steady, cohorts))
    names = feature_columns(abt)
    train = abt.filter(pl.col("reference_date") <= cohorts[-5])
    valid = abt.filter(pl.col("reference_date").is_in(cohorts[-3:-1]))
    booster, _ = fit_booster(train, valid, names, ModelParams())
    y = valid.get_column("churned").to_numpy()
    calibrator = fit_calibrator(y, predict(booster, valid, names), "platt")
    return booster, calibrator, names, reference_cohorts(abt)


def judge(model, current: pl.DataFrame) -> pl.DataFrame:
    booster, calibrator, names, reference = model
    probability = calibrator.apply(predict(booster, current, names))
    scores = current.select("reference_date", "seller_id").with_columns(
        churn_probability=pl.Series(probability)
    )
    reference_scores = calibrator.apply(predict(booster, reference, names))
    _, summary = drift_report(reference, reference_scores, current, scores, names)
    return summary.join(expected_performance(scores), on="reference_date").sort("reference_date")


def test_steady_marketplace_raises_no_drift(model, steady):
    table = judge(model, scored_frame(steady))
    assert table.get_column("reference_date").to_list() == SCORED
    assert not table.get_column("drift").any(), table
    assert table.get_column("max_feature_psi").max() < PSI_WARN
    assert table.get_column("score_psi").max() < PSI_WARN


def test_sellers_selling_less_drift_and_lower_the_expected_auc(model, steady):
    calm = judge(model, scored_frame(steady))
    shifted = judge(model, scored_frame(marketplace(Shift(SHIFT_ON, demand=0.35))))
    assert shifted.get_column("drift").all(), shifted
    assert (shifted.get_column("drifted_features") > 0).all()
    auc_calm = calm.get_column("expected_roc_auc").to_numpy()
    auc_shifted = shifted.get_column("expected_roc_auc").to_numpy()
    assert auc_shifted.mean() < auc_calm.mean() - 0.01, (auc_calm, auc_shifted)
    assert np.all(np.isfinite(auc_shifted))
