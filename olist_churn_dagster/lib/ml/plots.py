"""Evaluation figures for the churn model, drawn next to the baselines.

Figures are built with `matplotlib.figure.Figure` directly (rendered by Agg when saved), so
no pyplot global state is touched and nothing leaks between runs or threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from olist_churn_dagster.lib.ml.calibration import reliability_bins

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGSIZE_WIDE = (10.0, 4.2)


def new_figure(figsize: tuple[float, float]) -> Figure:
    """An empty figure; matplotlib is imported on the first one, not when the code
    location loads (a run worker that draws nothing never pays for it)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def roc_points(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates from (0, 0) through every distinct score threshold
    (scikit-learn's `roc_curve`, keeping the collinear points too). `y` needs both
    classes, as every scored block has (the model's `_check_block`)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, scores, drop_intermediate=False)
    return fpr, tpr


def pr_points(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision at every distinct score threshold, highest threshold first.

    scikit-learn's `precision_recall_curve` lists them lowest first and ends on the
    conventional (recall 0, precision 1) point; the step plot starts at the first real one.
    """
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(y, scores)
    return recall[-2::-1], precision[-2::-1]


def roc_pr_figure(y: np.ndarray, scores_by_model: Mapping[str, np.ndarray]) -> Figure:
    """ROC and precision-recall curves of every scorer on the same rows."""
    y = np.asarray(y, dtype=np.float64)
    fig = new_figure(FIGSIZE_WIDE)
    roc, pr = fig.subplots(1, 2)
    for name, scores in scores_by_model.items():
        scores = np.asarray(scores, dtype=np.float64)
        roc.plot(*roc_points(y, scores), label=name)
        pr.step(*pr_points(y, scores), where="post", label=name)
    roc.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (OOT)")
    pr.axhline(y.mean(), ls=":", c="grey", lw=1)
    pr.set(xlabel="recall", ylabel="precision", title="Precision-recall (OOT)", ylim=(0, 1.02))
    roc.legend(loc="lower right", fontsize="small")
    return fig


def reliability_points(
    y: np.ndarray, scores: np.ndarray, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Mean predicted probability and observed rate of each non-empty bin, in the ECE's
    bins (`reliability_bins`), so the diagram shows the gaps the logged ECE adds up."""
    p = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    count, sum_p, sum_y = reliability_bins(y, p, n_bins)
    used = count > 0
    return sum_p[used] / count[used], sum_y[used] / count[used]


def calibration_figure(
    y: np.ndarray, scores_by_model: Mapping[str, np.ndarray], *, n_bins: int = 10
) -> Figure:
    """Mean predicted vs observed churn rate per probability bin (reliability diagram)."""
    y = np.asarray(y, dtype=np.float64)
    fig = new_figure((5.5, 4.5))
    ax = fig.subplots()
    for name, scores in scores_by_model.items():
        ax.plot(*reliability_points(y, scores, n_bins), marker="o", label=name)
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    ax.set(
        xlabel="mean predicted churn probability",
        ylabel="observed churn rate",
        title="Calibration (OOT)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left", fontsize="small")
    return fig


def lift_figure(
    y: np.ndarray, scores_by_model: Mapping[str, np.ndarray], *, n_bins: int = 10
) -> Figure:
    """Cumulative share of churners caught vs share of sellers contacted, and decile lift."""
    y = np.asarray(y, dtype=np.float64)
    fig = new_figure(FIGSIZE_WIDE)
    gains, lift = fig.subplots(1, 2)
    width = 0.8 / max(len(scores_by_model), 1)
    deciles = np.arange(1, n_bins + 1)
    for i, (name, scores) in enumerate(scores_by_model.items()):
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        caught = np.cumsum(y[order]) / max(y.sum(), 1.0)
        gains.plot(np.arange(1, y.size + 1) / y.size, caught, label=name)
        bucket = np.minimum(np.arange(y.size) * n_bins // y.size, n_bins - 1)
        rate = np.bincount(bucket, weights=y[order], minlength=n_bins) / np.bincount(
            bucket, minlength=n_bins
        )
        lift.bar(
            deciles + (i - (len(scores_by_model) - 1) / 2) * width,
            rate / y.mean(),
            width,
            label=name,
        )
    gains.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    gains.set(xlabel="share of sellers, riskiest first", ylabel="share of churners", title="Gains")
    lift.axhline(1.0, ls=":", c="grey", lw=1)
    lift.set(
        xlabel="score decile (1 = riskiest)", ylabel="lift", title="Lift per decile", xticks=deciles
    )
    gains.legend(loc="lower right", fontsize="small")
    return fig


def importance_figure(
    gain: Mapping[str, float], mean_abs_contrib: Mapping[str, float], *, top: int = 15
) -> Figure:
    """The top features by share of total gain and by mean |contribution| on OOT rows."""
    fig = new_figure((11.0, 0.3 * top + 1.5))
    axes = fig.subplots(1, 2)
    panels = (
        (axes[0], gain, "share of total gain"),
        (axes[1], mean_abs_contrib, "mean |contribution| (log-odds)"),
    )
    for ax, values, label in panels:
        ranked = sorted(values.items(), key=lambda kv: kv[1], reverse=True)[:top][::-1]
        ax.barh([name for name, _ in ranked], [value for _, value in ranked])
        ax.set(xlabel=label, title=f"Top {len(ranked)} features by {label.split(' (')[0]}")
        ax.tick_params(axis="y", labelsize="small")
    return fig
