"""Probability calibration fitted on validation scores: Platt (logistic on the log-odds)
or isotonic (monotone step function), applied to later scores.

Why: early stopping on log loss keeps XGBoost's probabilities roughly honest, but the
churn rate drifts between cohorts, and the account managers read the probability itself
(risk bands, sales at risk). A calibrator fitted on the latest validation cohorts maps the
scores onto the churn rates seen most recently; which method is used is decided by the
walk-forward backtest (`lib/ml/backtest.py`), not by taste.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METHODS = ("none", "platt", "isotonic")
_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def _fit_platt(y: np.ndarray, s: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """Newton's method for p = sigmoid(a * logit(s) + b), with a tiny ridge for stability."""
    x = _logit(s)
    a, b = 1.0, 0.0
    for _ in range(iterations):  # a fixed number of 2x2 Newton steps, not a loop over rows
        p = 1.0 / (1.0 + np.exp(-(a * x + b)))
        w = p * (1 - p)
        grad = np.array([np.sum((p - y) * x), np.sum(p - y)]) + 1e-6 * np.array([a, b])
        hess = np.array([[np.sum(w * x * x), np.sum(w * x)], [np.sum(w * x), np.sum(w)]])
        step = np.linalg.solve(hess + 1e-6 * np.eye(2), grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-9:
            break
    return float(a), float(b)


def _fit_isotonic(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots (score, calibrated probability) of the isotonic fit (pool adjacent violators)."""
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)
    return (
        np.asarray(model.X_thresholds_, dtype=np.float64),
        np.asarray(model.y_thresholds_, dtype=np.float64),
    )


def reliability_bins(
    y: np.ndarray, p: np.ndarray, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, summed probability and summed label per equal-width probability bin.

    Bin i holds i/n_bins <= p < (i+1)/n_bins, with p = 1 in the top bin: the one binning
    that the ECE and the reliability diagram share, so the figure shows the gaps the
    metric adds up. (scikit-learn's `calibration_curve` closes its bins on the right
    instead and drops empty ones without their counts.) `p` must lie in [0, 1].
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    return (
        np.bincount(bins, minlength=n_bins),
        np.bincount(bins, weights=p, minlength=n_bins),
        np.bincount(bins, weights=y, minlength=n_bins),
    )


@dataclass(frozen=True)
class Calibrator:
    """A fitted calibration map; `none` is the identity."""

    method: str = "none"
    platt: tuple[float, float] = (1.0, 0.0)
    knots_x: list[float] = field(default_factory=list)
    knots_y: list[float] = field(default_factory=list)

    def apply(self, scores: np.ndarray) -> np.ndarray:
        s = np.asarray(scores, dtype=np.float64)
        if self.method == "platt":
            a, b = self.platt
            return 1.0 / (1.0 + np.exp(-(a * _logit(s) + b)))
        if self.method == "isotonic":
            return np.interp(s, self.knots_x, self.knots_y)
        return s

    def as_dict(self) -> dict:
        """JSON-ready form, logged beside the model so scoring applies the same map."""
        return {
            "method": self.method,
            "platt": list(self.platt),
            "knots_x": self.knots_x,
            "knots_y": self.knots_y,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Calibrator:
        return cls(
            method=data.get("method", "none"),
            platt=tuple(data.get("platt", (1.0, 0.0))),  # type: ignore[arg-type]
            knots_x=list(data.get("knots_x", [])),
            knots_y=list(data.get("knots_y", [])),
        )


def fit_calibrator(y_true: np.ndarray, scores: np.ndarray, method: str) -> Calibrator:
    """Fit `method` (one of METHODS) on validation labels and the model's scores."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {METHODS}")
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if method == "none":
        return Calibrator()
    if y.size == 0 or np.unique(y).size < 2:
        raise ValueError("calibration needs validation rows with both classes")
    if method == "platt":
        return Calibrator(method="platt", platt=_fit_platt(y, s))
    knots_x, knots_y = _fit_isotonic(y, s)
    return Calibrator(method="isotonic", knots_x=knots_x.tolist(), knots_y=knots_y.tolist())
