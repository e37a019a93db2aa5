import numpy as np
import pytest

from olist_churn_dagster.lib.ml.calibration import (
    METHODS,
    PROBABILITY_FLOOR,
    Calibrator,
    fit_calibrator,
)
from olist_churn_dagster.lib.ml.model import evaluate_scores


def _miscalibrated(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose true probability is sigmoid(2 * logit(s) - 0.5): overconfident-ish."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.02, 0.98, n)
    true_p = 1 / (1 + np.exp(-(2.0 * np.log(s / (1 - s)) - 0.5)))
    y = (rng.random(n) < true_p).astype(np.float64)
    return y, s


def _skewed(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose true probability is sigmoid(3 ln s - 0.5 ln(1 - s) + 1): a beta map
    with unequal slopes, which no Platt map (equal slopes) can follow."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.01, 0.99, n)
    true_p = 1 / (1 + np.exp(-(3.0 * np.log(s) + 0.5 * -np.log1p(-s) + 1.0)))
    y = (rng.random(n) < true_p).astype(np.float64)
    return y, s


def test_platt_recovers_the_true_map_and_lowers_ece():
    y, s = _miscalibrated()
    cal = fit_calibrator(y, s, "platt")
    a, b, c = cal.coef
    assert a == b == pytest.approx(2.0, abs=0.1) and c == pytest.approx(-0.5, abs=0.08)
    y2, s2 = _miscalibrated(seed=1)
    before = evaluate_scores(y2, s2)["ece"]
    after = evaluate_scores(y2, cal.apply(s2))["ece"]
    assert before > 0.05 and after < 0.015


def test_beta_recovers_unequal_slopes_where_platt_cannot():
    y, s = _skewed()
    beta, platt = fit_calibrator(y, s, "beta"), fit_calibrator(y, s, "platt")
    assert beta.coef == pytest.approx((3.0, 0.5, 1.0), abs=0.3)
    y2, s2 = _skewed(seed=1)
    beta_ece = evaluate_scores(y2, beta.apply(s2))["ece"]
    platt_ece = evaluate_scores(y2, platt.apply(s2))["ece"]
    assert beta_ece < 0.015 < platt_ece


def test_beta_keeps_the_order_when_a_slope_would_turn_negative():
    """Labels that fall as ln(1 - s) falls would fit b < 0: that slope is dropped."""
    rng = np.random.default_rng(5)
    s = rng.uniform(0.01, 0.99, 5_000)
    true_p = 1 / (1 + np.exp(-(2.0 * np.log(s) - 1.0 * -np.log1p(-s))))
    y = (rng.random(s.size) < true_p).astype(np.float64)
    cal = fit_calibrator(y, s, "beta")
    assert min(cal.coef[:2]) >= 0.0
    assert np.all(np.diff(cal.apply(np.linspace(0.0, 1.0, 1001))) >= 0)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_keeps_the_order_and_never_says_0_or_1(method):
    y, s = _miscalibrated(5_000)
    cal = fit_calibrator(y, s, method)
    grid = np.concatenate([[0.0, 1e-9], np.linspace(0, 1, 2001), [1 - 1e-9, 1.0]])
    mapped = cal.apply(np.sort(grid))
    assert np.all(np.diff(mapped) >= 0)
    assert mapped.min() >= PROBABILITY_FLOOR and mapped.max() <= 1 - PROBABILITY_FLOOR
    assert mapped.min() > 0.0 and mapped.max() < 1.0


@pytest.mark.parametrize("method", ["platt", "beta"])
def test_parametric_maps_tell_apart_every_pair_of_scores(method):
    """Platt and beta are strictly increasing: distinct scores keep distinct probabilities
    (within the floor), so they pool nothing into steps."""
    y, s = _miscalibrated(5_000)
    scores = np.linspace(0.05, 0.95, 10_000)
    assert np.all(np.diff(fit_calibrator(y, s, method).apply(scores)) > 0)


def test_isotonic_is_bounded_and_lowers_ece():
    y, s = _miscalibrated()
    cal = fit_calibrator(y, s, "isotonic")
    y2, s2 = _miscalibrated(seed=1)
    assert evaluate_scores(y2, cal.apply(s2))["ece"] < 0.02


def test_round_trip_legacy_platt_and_errors():
    s = np.array([0.1, 0.5, 0.9])
    assert np.array_equal(fit_calibrator(np.array([0, 1, 1]), s, "none").apply(s), s)
    y, scores = _miscalibrated(2_000)
    for method in METHODS:
        cal = fit_calibrator(y, scores, method)
        again = Calibrator.from_dict(cal.as_dict())
        np.testing.assert_allclose(again.apply(scores), cal.apply(scores))
    # A Platt map stored as `platt` = (a, c) reads as the same map.
    legacy = Calibrator.from_dict({"method": "platt", "platt": [2.0, -0.5]})
    assert legacy.coef == (2.0, 2.0, -0.5)
    expected = 1 / (1 + np.exp(-(2.0 * np.log(s / (1 - s)) - 0.5)))
    np.testing.assert_allclose(legacy.apply(s), expected)
    with pytest.raises(ValueError, match="unknown calibration method"):
        fit_calibrator(y, scores, "spline")
    with pytest.raises(ValueError, match="both classes"):
        fit_calibrator(np.zeros(5), np.linspace(0.1, 0.5, 5), "platt")
