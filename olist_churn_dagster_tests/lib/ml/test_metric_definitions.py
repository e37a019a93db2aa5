"""The evaluation metrics and curves, which scikit-learn computes, equal their textbook
definitions written out threshold by threshold and bin by bin, on scores full of ties."""

import numpy as np
import pytest

from olist_churn_dagster.lib.ml.model import evaluate_scores
from olist_churn_dagster.lib.ml.plots import pr_points, reliability_points, roc_points

TOL = 1e-12


def _tied_scores(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores rounded to 2 decimals: many ties, some on the bin edges, 0 and 1."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.float64)
    s = np.round(np.clip(0.3 + 0.25 * (y - 0.3) + rng.normal(0, 0.25, n), 0, 1), 2)
    return y, s


def _auc_by_pairs(y: np.ndarray, s: np.ndarray) -> float:
    """P(a churner outscores a non-churner), a tie counting half."""
    pos, neg = s[y == 1][:, None], s[y == 0][None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def _counts_at_thresholds(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives when flagging s >= t, for each distinct t, highest first."""
    thresholds = np.unique(s)[::-1]
    tp = np.array([y[s >= t].sum() for t in thresholds])
    fp = np.array([(1 - y)[s >= t].sum() for t in thresholds])
    return tp, fp


def _average_precision_by_thresholds(y: np.ndarray, s: np.ndarray) -> float:
    tp, fp = _counts_at_thresholds(y, s)
    recall_gain = np.diff(np.r_[0.0, tp]) / y.sum()
    return float(np.sum(recall_gain * tp / (tp + fp)))


def _bin_rows(p: np.ndarray, n_bins: int) -> list[np.ndarray]:
    """Row masks of the equal-width bins [i/n, (i+1)/n), p = 1 in the top one."""
    index = np.minimum(np.floor(p * n_bins), n_bins - 1)
    return [index == i for i in range(n_bins)]


def _ece_by_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Share of rows in each bin times its |observed rate - mean probability|, summed."""
    return float(
        sum(
            rows.sum() / y.size * abs(y[rows].mean() - p[rows].mean())
            for rows in _bin_rows(p, n_bins)
            if rows.any()
        )
    )


CASES = [(seed, n) for seed in (0, 1, 2) for n in (37, 400, 3000)]


@pytest.mark.parametrize(("seed", "n"), CASES)
def test_scalar_metrics_equal_their_definitions(seed: int, n: int):
    y, s = _tied_scores(seed, n)
    m = evaluate_scores(y, s)
    assert abs(m["roc_auc"] - _auc_by_pairs(y, s)) < TOL
    assert abs(m["pr_auc"] - _average_precision_by_thresholds(y, s)) < TOL
    assert abs(m["ece"] - _ece_by_bins(y, s)) < TOL


@pytest.mark.parametrize(("seed", "n"), CASES)
def test_curves_equal_their_definitions(seed: int, n: int):
    y, s = _tied_scores(seed, n)
    tp, fp = _counts_at_thresholds(y, s)
    fpr, tpr = roc_points(y, s)
    np.testing.assert_allclose(fpr, np.r_[0.0, fp / fp[-1]], rtol=0, atol=TOL)
    np.testing.assert_allclose(tpr, np.r_[0.0, tp / tp[-1]], rtol=0, atol=TOL)
    recall, precision = pr_points(y, s)
    np.testing.assert_allclose(recall, tp / tp[-1], rtol=0, atol=TOL)
    np.testing.assert_allclose(precision, tp / (tp + fp), rtol=0, atol=TOL)
    used = [rows for rows in _bin_rows(s, 10) if rows.any()]
    mean_p, rate = reliability_points(y, s)
    np.testing.assert_allclose(mean_p, [s[rows].mean() for rows in used], rtol=0, atol=TOL)
    np.testing.assert_allclose(rate, [y[rows].mean() for rows in used], rtol=0, atol=TOL)


def test_reliability_points_equal_scikit_learns_curve_off_the_bin_edges():
    # Off the edges the right-closed bins of `calibration_curve` hold the same rows.
    y, s = _tied_scores(5, 2000)
    s = np.where(np.isclose(s * 10, np.round(s * 10)), s + 0.005, s).clip(0, 1)
    from sklearn.calibration import calibration_curve

    rate, mean_p = calibration_curve(y, s, n_bins=10)
    ours_p, ours_rate = reliability_points(y, s)
    np.testing.assert_allclose(ours_p, mean_p, rtol=0, atol=TOL)
    np.testing.assert_allclose(ours_rate, rate, rtol=0, atol=TOL)


def test_undefined_metrics_are_nan():
    one_class = evaluate_scores(np.zeros(4), np.array([0.1, 0.4, 0.4, 0.9]))
    assert np.isnan(one_class["roc_auc"]) and np.isnan(one_class["pr_auc"])
    all_churn = evaluate_scores(np.ones(3), np.array([0.2, 0.5, 0.5]))
    assert np.isnan(all_churn["roc_auc"]) and all_churn["pr_auc"] == pytest.approx(1.0)
