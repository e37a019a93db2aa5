"""Monitoring of the churn scores: feature drift and realized performance of past scores.

Drift is the population stability index (PSI) of every feature between a reference frame
(usually the training ABT) and a current one (a recent scoring date). Realized performance
re-evaluates old scores once their labels have matured, so a model that silently decays
shows up as falling ROC AUC / top-decile precision over reference dates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from olist_churn_dagster.lib.ml.model import evaluate_scores
from olist_churn_dagster.lib.ml.plots import FIGSIZE_WIDE, new_figure
from olist_churn_dagster.lib.tables import KEYS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PSI_WARN = 0.2
PSI_EPSILON = 1e-4

PSI_SCHEMA = {
    "feature": pl.String,
    "psi": pl.Float64,
    "reference_rows": pl.Int64,
    "current_rows": pl.Int64,
    "null_share_reference": pl.Float64,
    "null_share_current": pl.Float64,
}
PERFORMANCE_METRICS = ["roc_auc", "pr_auc", "precision_top_decile", "lift_top_decile", "brier"]
PERFORMANCE_SCHEMA = {
    "reference_date": pl.Date,
    "sellers": pl.Int64,
    "churn_rate": pl.Float64,
    **dict.fromkeys(PERFORMANCE_METRICS, pl.Float64),
}

# --------------------------------------------------------------------------- drift


def _require(frame: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}")


def _values(frame: pl.DataFrame, column: str) -> np.ndarray:
    """Float view of a column; nulls and NaN both become NaN (both count as missing)."""
    return frame.get_column(column).cast(pl.Float64).to_numpy().astype(np.float64, copy=False)


def _reference_bins(reference: np.ndarray, bins: int) -> tuple[np.ndarray, float]:
    """Distinct quantile edges from the minimum up, and the maximum of the reference.

    Ties collapse (a constant column keeps a single edge) and the range bounds let values
    outside the reference range land in tail bins of their own, so a constant that moves
    still drifts.
    """
    present = reference[~np.isnan(reference)]
    if present.size == 0:
        return np.empty(0), np.nan
    edges = np.unique(np.quantile(present, np.linspace(0.0, 1.0, bins + 1)[:-1]))
    return edges, float(present.max())


def _bin_shares(values: np.ndarray, edges: np.ndarray, upper: float) -> np.ndarray:
    """Share of rows per bin: below range, one per quantile band, above range, missing."""
    n_bins = edges.size + 3
    index = np.searchsorted(edges, values, side="right")
    index = np.where(values > upper, n_bins - 2, index)
    index = np.where(np.isnan(values), n_bins - 1, index)
    return np.bincount(index, minlength=n_bins) / values.size


def _psi(reference: np.ndarray, current: np.ndarray, bins: int) -> float | None:
    """PSI over reference-quantile bins; empty bins get an epsilon so the log stays finite."""
    if reference.size == 0 or current.size == 0:
        return None
    edges, upper = _reference_bins(reference, bins)
    ref = np.maximum(_bin_shares(reference, edges, upper), PSI_EPSILON)
    cur = np.maximum(_bin_shares(current, edges, upper), PSI_EPSILON)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _null_share(values: np.ndarray) -> float | None:
    return float(np.isnan(values).mean()) if values.size else None


def population_stability(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    columns: Sequence[str],
    *,
    bins: int = 10,
) -> pl.DataFrame:
    """PSI of each feature between `reference` and `current`, one row per column.

    Bins are the reference's quantiles, so each holds ~1/bins of the reference and the
    index weighs every part of the distribution alike; values outside the reference range
    and missing values get bins of their own, so a feature that leaves its old range or
    starts arriving empty drifts too. `psi` is null when either frame has
    no rows (nothing to compare). Rule of thumb: < 0.1 stable, 0.1-0.2 watch, > 0.2 drift.
    """
    if bins < 2:
        raise ValueError(f"population_stability: bins must be at least 2, got {bins}")
    _require(reference, columns, "population_stability: reference")
    _require(current, columns, "population_stability: current")
    rows = []
    for column in columns:
        ref, cur = _values(reference, column), _values(current, column)
        rows.append(
            {
                "feature": column,
                "psi": _psi(ref, cur, bins),
                "reference_rows": ref.size,
                "current_rows": cur.size,
                "null_share_reference": _null_share(ref),
                "null_share_current": _null_share(cur),
            }
        )
    return pl.DataFrame(rows, schema=PSI_SCHEMA)


def drifted(psi_table: pl.DataFrame, threshold: float = PSI_WARN) -> pl.DataFrame:
    """Features whose PSI exceeds `threshold`, worst first (null PSI never counts)."""
    return psi_table.filter(pl.col("psi") > threshold).sort("psi", descending=True)


# --------------------------------------------------------------------------- performance


def _evaluable(scores: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """Scored rows with a label, restricted to dates whose labels are all mature and mixed.

    Rows without a label (not an active seller) are dropped first: they have no outcome to
    wait for. A date with any immature label is skipped whole, since a partial evaluation
    would be biased towards sellers whose silence started earliest.
    """
    _require(scores, [*KEYS, "churn_probability"], "realized_performance: scores")
    _require(labels, [*KEYS, "churned", "label_mature"], "realized_performance: labels")
    joined = scores.select(*KEYS, "churn_probability").join(
        labels.select(*KEYS, "churned", "label_mature"), on=KEYS, how="inner"
    )
    return joined.drop_nulls(["churn_probability", "churned"]).filter(
        pl.col("label_mature").fill_null(False).all().over("reference_date")
        & (pl.col("churned").n_unique().over("reference_date") == 2)
    )


def _date_metrics(group: pl.DataFrame) -> dict[str, object]:
    y = group.get_column("churned").to_numpy().astype(np.float64)
    metrics = evaluate_scores(y, group.get_column("churn_probability").to_numpy())
    return {
        "reference_date": group.get_column("reference_date")[0],
        "sellers": group.height,
        "churn_rate": metrics["base_rate"],
        **{name: metrics[name] for name in PERFORMANCE_METRICS},
    }


def realized_performance(scores: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """How past scores did against their now-known outcomes, one row per reference date.

    Only dates whose labels are all mature and contain both classes are evaluated (AUC is
    undefined otherwise). Each date is its own evaluation, so a short loop over dates calls
    the model's `evaluate_scores` - the same metrics the model was selected on.
    """
    ready = _evaluable(scores, labels)
    rows = [_date_metrics(group) for group in ready.partition_by("reference_date")]
    return pl.DataFrame(rows, schema=PERFORMANCE_SCHEMA).sort("reference_date")


# --------------------------------------------------------------------------- figure


def performance_figure(table: pl.DataFrame) -> Figure:
    """ROC AUC and top-decile precision (against the churn rate) over reference dates."""
    fig = new_figure(FIGSIZE_WIDE)
    auc, precision = fig.subplots(1, 2, sharex=True)
    table = table.sort("reference_date")
    dates = table.get_column("reference_date").to_list()
    auc.plot(dates, table.get_column("roc_auc").to_list(), marker="o", label="ROC AUC")
    auc.axhline(0.5, ls=":", c="grey", lw=1, label="random")
    lowest = table.get_column("roc_auc").drop_nans().min()
    bottom = min(0.4, lowest - 0.05) if isinstance(lowest, float) else 0.4
    auc.set(ylabel="ROC AUC", title="Realized ROC AUC", ylim=(bottom, 1.02))
    precision.plot(
        dates, table.get_column("precision_top_decile").to_list(), marker="o", label="top decile"
    )
    precision.plot(
        dates, table.get_column("churn_rate").to_list(), ls=":", c="grey", label="churn rate"
    )
    precision.set(ylabel="precision", title="Realized top-decile precision", ylim=(0, 1.02))
    for ax in (auc, precision):
        ax.set_xlabel("reference date")
        ax.legend(loc="lower left", fontsize="small")
        ax.tick_params(axis="x", labelrotation=30)
    if table.is_empty():
        auc.text(0.5, 0.5, "no mature scored dates yet", ha="center", transform=auc.transAxes)
    return fig
