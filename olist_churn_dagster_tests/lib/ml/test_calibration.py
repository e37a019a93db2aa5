import numpy as np
import pytest

from olist_churn_dagster.lib.ml.calibration import Calibrator, fit_calibrator
from olist_churn_dagster.lib.ml.model import evaluate_scores


def _miscalibrated(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose true probability is sigmoid(2 * logit(s) - 0.5): overconfident-ish."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.02, 0.98, n)
    true_p = 1 / (1 + np.exp(-(2.0 * np.log(s / (1 - s)) - 0.5)))
    y = (rng.random(n) < true_p).astype(np.float64)
    return y, s


def test_platt_recovers_the_true_map_and_lowers_ece():
    y, s = _miscalibrated()
    cal = fit_calibrator(y, s, "platt")
    a, b = cal.platt
    assert a == pytest.approx(2.0, abs=0.1) and b == pytest.approx(-0.5, abs=0.08)
    y2, s2 = _miscalibrated(seed=1)
    before = evaluate_scores(y2, s2)["ece"]
    after = evaluate_scores(y2, cal.apply(s2))["ece"]
    assert before > 0.05 and after < 0.015


def test_isotonic_is_monotone_bounded_and_lowers_ece():
    y, s = _miscalibrated()
    cal = fit_calibrator(y, s, "isotonic")
    grid = np.linspace(0, 1, 501)
    mapped = cal.apply(grid)
    assert np.all(np.diff(mapped) >= 0) and mapped.min() >= 0 and mapped.max() <= 1
    y2, s2 = _miscalibrated(seed=1)
    assert evaluate_scores(y2, cal.apply(s2))["ece"] < 0.02


def test_none_is_identity_round_trip_and_errors():
    s = np.array([0.1, 0.5, 0.9])
    assert np.array_equal(fit_calibrator(np.array([0, 1, 1]), s, "none").apply(s), s)
    y, scores = _miscalibrated(2_000)
    for method in ("platt", "isotonic"):
        cal = fit_calibrator(y, scores, method)
        again = Calibrator.from_dict(cal.as_dict())
        np.testing.assert_allclose(again.apply(scores), cal.apply(scores))
    with pytest.raises(ValueError, match="unknown calibration method"):
        fit_calibrator(y, scores, "beta")
    with pytest.raises(ValueError, match="both classes"):
        fit_calibrator(np.zeros(5), np.linspace(0.1, 0.5, 5), "platt")
