"""Probability calibration of the model's scores: Platt or beta (logistic maps of the
score's logs) or isotonic (centred: linear between the pooled blocks' centres), fitted on
scores whose labels have matured and applied to later scores.

Why: early stopping on log loss keeps XGBoost's probabilities roughly honest, but the
churn rate drifts between cohorts, and the account managers read the probability itself
(risk bands, sales at risk). The ranking does not need it: sellers are ranked by the
model's own score (`lib/ml/scoring.py`), so a map that pools scores into steps can never
tie sellers the model tells apart. Which method is used is decided by the walk-forward
backtest (`lib/ml/backtest.py`), each method fitted on earlier cutoffs and judged on later
ones, not by taste.

Every method, the identity included, returns probabilities within
[PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR]: with about a thousand sellers per cohort no
churn rate beyond one in a thousand can be measured, and 0 or 100 % would claim certainty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METHODS = ("none", "platt", "beta", "isotonic")
PROBABILITY_FLOOR = 1e-3
_EPS = 1e-6  # keeps the logs of a score of exactly 0 or 1 finite


def _log_features(scores: np.ndarray) -> np.ndarray:
    """The beta map's inputs, both rising with the score: ln s and -ln(1 - s)."""
    s = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1 - _EPS)
    return np.column_stack([np.log(s), -np.log1p(-s)])


def _logistic(x: np.ndarray, y: np.ndarray) -> tuple[list[float], float]:
    """Unpenalised logistic regression of y on the columns of x (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=np.inf, max_iter=1000).fit(x, y)
    return [float(c) for c in model.coef_[0]], float(model.intercept_[0])


def _fit_platt(y: np.ndarray, s: np.ndarray) -> tuple[float, float, float]:
    """p = sigmoid(a * logit(s) + c): the beta map with both slopes equal."""
    (a,), c = _logistic(_log_features(s).sum(axis=1, keepdims=True), y)
    return a, a, c


def _fit_beta(y: np.ndarray, s: np.ndarray) -> tuple[float, float, float]:
    """p = sigmoid(a * ln s - b * ln(1 - s) + c) (Kull et al., 2017), with a, b >= 0 so
    that it keeps the scores' order: a slope fitted below 0 is dropped and the other refit."""
    x = _log_features(s)
    (a, b), c = _logistic(x, y)
    if a >= 0 and b >= 0:
        return a, b, c
    keep = 1 if a < 0 else 0
    (slope,), c = _logistic(x[:, [keep]], y)
    slope = max(slope, 0.0)
    return (0.0, slope, c) if keep else (slope, 0.0, c)


def _fit_isotonic(y: np.ndarray, s: np.ndarray) -> tuple[list[float], list[float]]:
    """Knots of the centred isotonic fit (Oron and Flournoy, 2017): each block of the pool
    adjacent violators fit (scikit-learn) becomes one knot, at its mean score, with its
    churn rate; `apply` interpolates linearly between knots. Unlike the step function
    itself, the map rises strictly between the first and the last knot, so scores the
    model tells apart keep apart probabilities."""
    from sklearn.isotonic import IsotonicRegression

    order = np.argsort(s, kind="stable")
    scores = s[order]
    fitted = IsotonicRegression(y_min=0.0, y_max=1.0).fit_transform(scores, y[order])
    rates, starts = np.unique(fitted, return_index=True)  # fitted rises: one run per rate
    sizes = np.diff(np.append(starts, fitted.size))
    centres = np.add.reduceat(scores, starts) / sizes
    return centres.tolist(), rates.tolist()


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
    """A fitted calibration map; `none` is the identity. Platt and beta share one form,
    sigmoid(a * ln s - b * ln(1 - s) + c) with `coef` = (a, b, c) (Platt: a = b)."""

    method: str = "none"
    coef: tuple[float, float, float] = (1.0, 1.0, 0.0)
    knots_x: list[float] = field(default_factory=list)
    knots_y: list[float] = field(default_factory=list)

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, in the scores' order, never below PROBABILITY_FLOOR
        nor above 1 - PROBABILITY_FLOOR."""
        s = np.asarray(scores, dtype=np.float64)
        if self.method in ("platt", "beta"):
            a, b, c = self.coef
            p = 1.0 / (1.0 + np.exp(-(_log_features(s) @ np.array([a, b]) + c)))
        elif self.method == "isotonic":
            p = np.interp(s, self.knots_x, self.knots_y)
        else:
            p = s
        return np.clip(p, PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)

    def as_dict(self) -> dict:
        """JSON-ready form, logged beside the model so scoring applies the same map."""
        return {
            "method": self.method,
            "coef": list(self.coef),
            "knots_x": self.knots_x,
            "knots_y": self.knots_y,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Calibrator:
        """The map `as_dict` wrote; a Platt map logged as `platt` = (a, c) (before Platt
        and beta shared one form) reads as coef (a, a, c)."""
        if "coef" in data:
            coef = tuple(data["coef"])
        elif "platt" in data:
            a, c = data["platt"]
            coef = (a, a, c)
        else:
            coef = (1.0, 1.0, 0.0)
        return cls(
            method=data.get("method", "none"),
            coef=coef,  # type: ignore[arg-type]
            knots_x=list(data.get("knots_x", [])),
            knots_y=list(data.get("knots_y", [])),
        )


def fit_calibrator(y_true: np.ndarray, scores: np.ndarray, method: str) -> Calibrator:
    """Fit `method` (one of METHODS) on matured labels and the model's scores for them."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {METHODS}")
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if method == "none":
        return Calibrator()
    if y.size == 0 or np.unique(y).size < 2:
        raise ValueError("calibration needs rows with both classes")
    if method == "isotonic":
        knots_x, knots_y = _fit_isotonic(y, s)
        return Calibrator(method="isotonic", knots_x=knots_x, knots_y=knots_y)
    fit = _fit_platt if method == "platt" else _fit_beta
    return Calibrator(method=method, coef=fit(y, s))
