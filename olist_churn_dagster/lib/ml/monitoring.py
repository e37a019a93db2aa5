"""Monitoring of the churn scores over time: drift, estimated and realized performance.

Drift is the population stability index (PSI) of each model feature and of the score
distribution, per scored date, against what the model was trained on: the ABT's newest
mature cohorts (`reference_cohorts`), out of time for the champion and closest to the
scored dates. Features that grow with time by design (tenure, lifetime totals) are
compared after `comparable_over_time`, or a growing marketplace's normal course reads as
drift. Before labels mature, performance is estimated from the calibrated probabilities
alone (`expected_performance`); once they mature, realized performance re-evaluates the
old scores, so a model that silently decays shows up as falling ROC AUC / top-decile
precision over reference dates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from olist_churn_dagster.lib.features import FEATURE_CATALOGUE
from olist_churn_dagster.lib.ml.model import evaluate_scores
from olist_churn_dagster.lib.ml.plots import FIGSIZE_WIDE, new_figure
from olist_churn_dagster.lib.ml.scoring import RISK_BANDS
from olist_churn_dagster.lib.tables import KEYS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Rule of thumb for PSI: < 0.1 stable, 0.1-0.25 worth a look, > 0.25 a shift (the usual
# credit-scoring bands). The day after Black Friday moves `sales_recency_days` by about
# 0.22 on `make run`'s data, a season rather than a change of the sellers' dynamics.
PSI_WARN = 0.25
# Half a row added to every bin on both sides: an empty bin keeps the log finite without
# weighing more than a bin with one row of the date's sellers would (a fixed epsilon made
# one empty bin of 60 sellers cost a PSI of 0.7).
PSI_PSEUDO_COUNT = 0.5
PSI_BINS = 10
# With few sellers PSI is noisy: with no drift it is about (1/n + 1/m) x a chi-square of
# (bins + 2) degrees of freedom (the quantile bins, both tails and the missing values,
# minus one). A date is judged against whichever is higher: PSI_WARN, or what sampling
# alone exceeds with this chance per feature (at 1,300 sellers a date that is 0.04).
NOISE_CHANCE = 1e-4
# The ABT's newest cohorts the scored dates are compared with: half a year of seasons, and
# with the default split the champion's test, gap and validation cohorts, none it was
# fitted on, so its scores there are out of sample too.
REFERENCE_COHORTS = 6
SCORE = "churn_probability"
TENURE = "sales_tenure_days"
# Features that grow with every day a seller stays: the catalogue's lifetime features.
GROWING = tuple(spec.name for spec in FEATURE_CATALOGUE if spec.window == "lifetime")
BANDS = tuple(band for _, band in RISK_BANDS)

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
EXPECTED_SCHEMA = {
    "reference_date": pl.Date,
    "sellers": pl.Int64,
    "expected_churn_rate": pl.Float64,
    "expected_roc_auc": pl.Float64,
    "expected_precision_top_decile": pl.Float64,
}
DRIFT_SCHEMA = {
    "reference_date": pl.Date,
    "psi_threshold": pl.Float64,
    "score_psi": pl.Float64,
    "max_feature_psi": pl.Float64,
    "worst_feature": pl.String,
    "drifted_features": pl.Int64,
    "drifted": pl.String,
    "drift": pl.Boolean,
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


def _bin_index(values: np.ndarray, edges: np.ndarray, upper: float) -> np.ndarray:
    """Bin of each value: below range, one per quantile band, above range, missing."""
    n_bins = edges.size + 3
    index = np.searchsorted(edges, values, side="right")
    index = np.where(values > upper, n_bins - 2, index)
    return np.where(np.isnan(values), n_bins - 1, index)


def _shares(counts: np.ndarray) -> np.ndarray:
    """Share of rows per bin (last axis), with PSI_PSEUDO_COUNT rows added to every bin."""
    smoothed = counts + PSI_PSEUDO_COUNT
    return smoothed / smoothed.sum(axis=-1, keepdims=True)


def _psi_per_group(
    reference: np.ndarray, current: np.ndarray, group: np.ndarray, n_groups: int, bins: int
) -> np.ndarray:
    """PSI of each group of `current` over the reference's quantile bins, all groups in one
    pass (shares smoothed, see PSI_PSEUDO_COUNT). NaN for an empty group."""
    if reference.size == 0:
        return np.full(n_groups, np.nan)
    edges, upper = _reference_bins(reference, bins)
    n_bins = edges.size + 3
    ref = _shares(np.bincount(_bin_index(reference, edges, upper), minlength=n_bins))
    cells = group * n_bins + _bin_index(current, edges, upper)
    counts = np.bincount(cells, minlength=n_groups * n_bins).reshape(n_groups, n_bins)
    cur = _shares(counts)
    psi = np.sum((cur - ref) * np.log(cur / ref), axis=1)
    return np.where(counts.sum(axis=1) > 0, psi, np.nan)


def _stability(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    columns: Sequence[str],
    group: np.ndarray,
    n_groups: int,
    bins: int,
) -> pl.DataFrame:
    """PSI_SCHEMA rows for every column and group (column-major) plus a `group` column."""
    if bins < 2:
        raise ValueError(f"population_stability: bins must be at least 2, got {bins}")
    _require(reference, columns, "population_stability: reference")
    _require(current, columns, "population_stability: current")
    rows = np.bincount(group, minlength=n_groups)
    psi, null_current, null_reference = [], [], []
    for column in columns:  # one pass per feature, over every group at once
        ref, cur = _values(reference, column), _values(current, column)
        psi.append(_psi_per_group(ref, cur, group, n_groups, bins))
        missing = np.bincount(group, weights=np.isnan(cur), minlength=n_groups)
        null_current.append(missing / np.maximum(rows, 1))
        null_reference.append(np.isnan(ref).mean() if ref.size else np.nan)
    n = len(columns)
    return pl.DataFrame(
        {
            "group": np.tile(np.arange(n_groups), n),
            "feature": np.repeat(np.asarray(columns, dtype=object), n_groups),
            "psi": np.concatenate(psi) if n else [],
            "reference_rows": np.full(n * n_groups, reference.height),
            "current_rows": np.tile(rows, n),
            "null_share_reference": np.repeat(null_reference, n_groups),
            "null_share_current": np.where(
                np.tile(rows, n) > 0, np.concatenate(null_current) if n else [], np.nan
            ),
        },
        schema={"group": pl.Int64, **PSI_SCHEMA},
    ).with_columns(pl.col(pl.Float64).fill_nan(None))


def population_stability(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    columns: Sequence[str],
    *,
    bins: int = PSI_BINS,
) -> pl.DataFrame:
    """PSI of each feature between `reference` and `current`, one row per column.

    Bins are the reference's quantiles, so each holds ~1/bins of the reference and the
    index weighs every part of the distribution alike; values outside the reference range
    and missing values get bins of their own, so a feature that leaves its old range or
    starts arriving empty drifts too; every bin gets half a row (PSI_PSEUDO_COUNT). `psi`
    is null when either frame has no rows (nothing to compare). Thresholds: see PSI_WARN.
    """
    group = np.zeros(current.height, dtype=np.int64)
    return _stability(reference, current, columns, group, 1, bins).drop("group")


def drift_by_date(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    columns: Sequence[str],
    *,
    bins: int = PSI_BINS,
) -> pl.DataFrame:
    """`population_stability` of every reference date of `current` against the whole
    `reference`, all dates in one pass per column: reference_date plus PSI_SCHEMA, one
    row per date and column."""
    _require(current, ["reference_date"], "drift_by_date: current")
    dates = current.get_column("reference_date").unique().sort()
    group = current.get_column("reference_date").rank("dense").cast(pl.Int64).to_numpy() - 1
    table = _stability(reference, current, columns, group, dates.len(), bins)
    return table.select(
        pl.col("group").replace_strict(range(dates.len()), dates).alias("reference_date"),
        *PSI_SCHEMA,
    )


def reference_cohorts(abt: pl.DataFrame, n: int = REFERENCE_COHORTS) -> pl.DataFrame:
    """The ABT's `n` newest cohorts: what the scored dates are compared with."""
    newest = abt.get_column("reference_date").unique().sort().tail(n)
    return abt.filter(pl.col("reference_date").is_in(newest.implode()))


def comparable_over_time(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with the features that grow by design (GROWING) made comparable between
    dates: the tenure as a share of the longest among the date's sellers (about the
    marketplace's age), and the lifetime totals per day of tenure (a pace).

    Why: every seller who stays is a day older and has sold a little more each day, and
    the oldest sellers are older than anyone in the training cohorts, so compared raw
    these features drift on a steady marketplace (a PSI of 0.5 and more for the tenure
    two months after training), while the share and the pace only move when the
    sellers' dynamics do.
    """
    growing = [c for c in GROWING if c in frame.columns]
    if not growing:
        return frame
    _require(frame, ["reference_date", TENURE], "comparable_over_time: frame")
    days = pl.col(TENURE).cast(pl.Float64)
    return frame.with_columns(
        (days / days.max().over("reference_date")).alias(c)
        if c == TENURE
        else (pl.col(c).cast(pl.Float64) / (days + 1.0)).alias(c)
        for c in growing
    )


def psi_threshold(reference_rows: pl.Expr, current_rows: pl.Expr) -> pl.Expr:
    """PSI_WARN, or the PSI that sampling alone exceeds with chance NOISE_CHANCE between
    samples of these sizes when that is higher (see NOISE_CHANCE)."""
    from scipy.stats import chi2

    noise = chi2.ppf(1.0 - NOISE_CHANCE, PSI_BINS + 2)
    chance = noise * (1.0 / reference_rows + 1.0 / current_rows)
    return pl.max_horizontal(pl.lit(PSI_WARN), chance)


def _drifted_list(feature_psi: pl.DataFrame) -> pl.DataFrame:
    """Per date: how many features drifted past the date's threshold and which, worst
    first."""
    over = feature_psi.filter(pl.col("psi") > pl.col("psi_threshold"))
    text = pl.concat_str(pl.col("feature"), pl.lit(" ("), pl.col("psi").round(3), pl.lit(")"))
    return (
        over.sort("psi", descending=True)
        .group_by("reference_date", maintain_order=True)
        .agg(
            pl.len().cast(pl.Int64).alias("drifted_features"), text.str.join(", ").alias("drifted")
        )
    )


def drift_summary(feature_psi: pl.DataFrame, score_psi: pl.DataFrame) -> pl.DataFrame:
    """One row per date of `feature_psi` (and `score_psi`, both from `drift_by_date`): the
    date's threshold (`psi_threshold`), the score distribution's PSI, the worst feature and
    its PSI, the features past the threshold, and `drift`: the scores or any feature past
    it."""
    threshold = psi_threshold(pl.col("reference_rows"), pl.col("current_rows"))
    feature_psi = feature_psi.with_columns(psi_threshold=threshold)
    worst = (
        feature_psi.drop_nulls("psi")
        .sort("psi", descending=True)
        .group_by("reference_date", maintain_order=True)
        .first()
        .select(
            "reference_date",
            pl.col("psi").alias("max_feature_psi"),
            pl.col("feature").alias("worst_feature"),
        )
    )
    scores = score_psi.select(
        "reference_date", pl.col("psi").alias("score_psi"), threshold.alias("psi_threshold")
    )
    table = (
        scores.join(worst, on="reference_date", how="full", coalesce=True)
        .join(_drifted_list(feature_psi), on="reference_date", how="left")
        .with_columns(pl.col("drifted_features").fill_null(0), pl.col("drifted").fill_null(""))
    )
    past = (pl.col("score_psi") > pl.col("psi_threshold")).fill_null(False) | (
        pl.col("drifted_features") > 0
    )
    return (
        table.with_columns(drift=past)
        .select(*DRIFT_SCHEMA)
        .cast(DRIFT_SCHEMA)
        .sort("reference_date")
    )


def drift_report(
    reference: pl.DataFrame,
    reference_scores: np.ndarray,
    current: pl.DataFrame,
    scores: pl.DataFrame,
    features: Sequence[str],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Drift of the scored dates against the reference cohorts, for one model.

    `reference`: the reference cohorts' rows (`reference_cohorts`); `reference_scores`:
    the model's calibrated probabilities for them; `current`: the model frame of the
    scored dates; `scores`: their score rows. Features are compared after
    `comparable_over_time`. Returns the PSI of every feature per date (`drift_by_date`)
    and the per-date `drift_summary`.
    """
    feature_psi = drift_by_date(
        comparable_over_time(reference), comparable_over_time(current), features
    )
    score_psi = drift_by_date(pl.DataFrame({SCORE: reference_scores}), scores, [SCORE])
    return feature_psi, drift_summary(feature_psi, score_psi)


def band_shares(scores: pl.DataFrame) -> pl.DataFrame:
    """Share of each date's scored sellers per risk band: `share_<band>` for every band."""
    _require(scores, ["reference_date", "risk_band"], "band_shares: scores")
    return (
        scores.group_by("reference_date")
        .agg((pl.col("risk_band") == band).mean().alias(f"share_{band}") for band in BANDS)
        .sort("reference_date")
    )


# --------------------------------------------------------------------------- estimated


def expected_performance(scores: pl.DataFrame) -> pl.DataFrame:
    """Performance expected from the calibrated probabilities alone, per reference date,
    before any label has matured (confidence-based performance estimation).

    If the calibration holds, seller i churns with probability p_i. Then the expected
    churn rate is the mean p; the expected ROC AUC is the expected number of (churner,
    stayer) pairs ranked right over the expected number of such pairs, ties counting
    half: sum over i != j of p_i (1 - p_j) [p_i > p_j] / sum over i != j of p_i (1 - p_j);
    the expected top-decile precision is the mean p of the top decile (ties at the cut
    counted as `evaluate_scores` counts them). All dates in one columnar pass.
    """
    _require(scores, ["reference_date", SCORE], "expected_performance: scores")
    p = pl.col(SCORE).cast(pl.Float64)
    ties = (
        scores.group_by("reference_date", SCORE)
        .agg(P=p.sum(), Q=(1.0 - p).sum(), S=(p * (1.0 - p)).sum())
        .sort("reference_date", SCORE)
        .with_columns(below=pl.col("Q").cum_sum().over("reference_date") - pl.col("Q"))
        .group_by("reference_date")
        .agg(
            concordant=(
                pl.col("P") * pl.col("below") + 0.5 * (pl.col("P") * pl.col("Q") - pl.col("S"))
            ).sum(),
            pairs=pl.col("P").sum() * pl.col("Q").sum() - pl.col("S").sum(),
        )
    )
    return (
        _expected_top_decile(scores)
        .join(ties, on="reference_date")
        .select(
            "reference_date",
            "sellers",
            "expected_churn_rate",
            pl.when(pl.col("pairs") > 0)
            .then(pl.col("concordant") / pl.col("pairs"))
            .alias("expected_roc_auc"),
            "expected_precision_top_decile",
        )
        .cast(EXPECTED_SCHEMA)
        .sort("reference_date")
    )


def _expected_top_decile(scores: pl.DataFrame) -> pl.DataFrame:
    """Per date: sellers, mean p, and the mean p of the top decile by p (ties at the cut
    filling the decile at their value, as `evaluate_scores` counts them)."""
    p = pl.col(SCORE).cast(pl.Float64)
    n_top = (pl.len() * 0.1).ceil().cast(pl.Int64).clip(lower_bound=1)
    cut = p.sort(descending=True).get(n_top - 1)
    above = p > cut
    return scores.group_by("reference_date").agg(
        pl.len().cast(pl.Int64).alias("sellers"),
        p.mean().alias("expected_churn_rate"),
        ((p.filter(above).sum() + (n_top - above.sum()) * cut) / n_top).alias(
            "expected_precision_top_decile"
        ),
    )


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


def performance_by_date(scores: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """Expected beside realized performance, one row per scored date: the expected figures
    for every date, the realized churn rate, ROC AUC and top-decile precision once the
    date's labels have all matured (null before)."""
    realized = realized_performance(scores, labels).select(
        "reference_date",
        pl.col("churn_rate").alias("realized_churn_rate"),
        pl.col("roc_auc").alias("realized_roc_auc"),
        pl.col("precision_top_decile").alias("realized_precision_top_decile"),
    )
    return expected_performance(scores).join(realized, on="reference_date", how="left")


def monitoring_table(
    drift: pl.DataFrame, scores: pl.DataFrame, performance: pl.DataFrame
) -> pl.DataFrame:
    """One row per date of `drift` (`drift_summary`): the model version that scored it,
    the sellers, the drift, the share of sellers per band, and the expected and realized
    performance (`performance_by_date`)."""
    _require(scores, ["reference_date", "model_version", "risk_band"], "monitoring: scores")
    versions = scores.group_by("reference_date").agg(pl.col("model_version").first())
    return (
        drift.join(versions, on="reference_date", how="left")
        .join(band_shares(scores), on="reference_date", how="left")
        .join(performance, on="reference_date", how="left")
        .select(
            "reference_date",
            "model_version",
            "sellers",
            *[c for c in DRIFT_SCHEMA if c != "reference_date"],
            *[f"share_{band}" for band in BANDS],
            *[c for c in performance.columns if c not in ("reference_date", "sellers")],
        )
        .sort("reference_date")
    )


# --------------------------------------------------------------------------- figure


def performance_figure(table: pl.DataFrame) -> Figure:
    """ROC AUC and top-decile precision over reference dates, expected (from the
    probabilities, every date) beside realized (once the labels have matured), from
    `performance_by_date`."""
    fig = new_figure(FIGSIZE_WIDE)
    auc, precision = fig.subplots(1, 2, sharex=True)
    table = table.sort("reference_date")
    dates = table.get_column("reference_date").to_list()

    def plot(ax: Axes, column: str, label: str, **style: object) -> None:
        values = table.get_column(column).cast(pl.Float64).fill_null(np.nan).to_numpy()
        ax.plot(dates, values, label=label, **style)

    plot(auc, "expected_roc_auc", "expected", ls="--", c="tab:blue")
    plot(auc, "realized_roc_auc", "realized", marker="o", c="tab:blue")
    auc.axhline(0.5, ls=":", c="grey", lw=1, label="random")
    lowest = table.select(pl.min_horizontal("expected_roc_auc", "realized_roc_auc").min()).item()
    bottom = min(0.4, lowest - 0.05) if isinstance(lowest, float) else 0.4
    auc.set(ylabel="ROC AUC", title="ROC AUC: expected and realized", ylim=(bottom, 1.02))
    plot(
        precision, "expected_precision_top_decile", "expected, top decile", ls="--", c="tab:orange"
    )
    plot(
        precision,
        "realized_precision_top_decile",
        "realized, top decile",
        marker="o",
        c="tab:orange",
    )
    plot(precision, "realized_churn_rate", "churn rate", ls=":", c="grey")
    precision.set(ylabel="precision", title="Top-decile precision", ylim=(0, 1.02))
    for ax in (auc, precision):
        ax.set_xlabel("reference date")
        ax.legend(loc="lower left", fontsize="small")
        ax.tick_params(axis="x", labelrotation=30)
    if table.is_empty():
        auc.text(0.5, 0.5, "no scored dates yet", ha="center", transform=auc.transAxes)
    return fig
