"""Walk-forward backtest: the model judged at many cutoffs, next to strong simple baselines.

One out-of-time split is one draw: with ~1,000 sellers per cohort the ROC AUC moves by
about 0.01 from cohort to cohort, as much as a model change is worth. So each of the last
N mature cohorts becomes a cutoff in turn; for each, every recipe is trained only on
cohorts whose labels had matured before it (the gap rule of `plan_time_split`: blocks at
least one label horizon apart), early-stopped on the latest cohorts before it, and scored
on the cutoff's active sellers. The model is compared with the recency rule, with a
small gradient-boosted model on ~15 plain seller aggregates (`SIMPLE_BASELINE_FEATURES`)
and with the original project's recipe plus recency (`ORIGINAL_RECIPE_BASELINE`: a tuned
gradient-boosted model on every column of its six feature families, days since the last
sale among them, without the derived rhythm features), and the per-cutoff gaps give a mean
with a confidence interval instead of a single number.

Calibration is judged the same way, on cutoffs it did not see: for each cutoff, every
method is fitted on the model's out-of-time scores at the earlier cutoffs whose labels had
matured by then, and its ECE is measured on the cutoff (`walk_forward_calibration`).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from olist_churn_dagster.lib.features import FEATURE_CATALOGUE
from olist_churn_dagster.lib.ml.abt import LABEL, feature_columns
from olist_churn_dagster.lib.ml.calibration import METHODS, fit_calibrator
from olist_churn_dagster.lib.ml.model import (
    LOWER_IS_BETTER,
    ModelParams,
    SplitPlan,
    baseline_scores,
    evaluate_scores,
    fit_booster,
    predict,
)
from olist_churn_dagster.lib.ml.plots import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MODEL = "model"
SIMPLE_BASELINE = "simple_gbm"
RECENCY_RULE = "recency_rule"
# Plain aggregates anyone would compute first: volume, money, recency, tenure, rhythm,
# reviews and delivery. The strong baseline the model must beat by a clear margin.
SIMPLE_BASELINE_FEATURES = (
    "sales_orders",
    "sales_active_days",
    "sales_items",
    "sales_revenue",
    "sales_avg_ticket",
    "sales_recency_days",
    "sales_tenure_days",
    "sales_lifetime_orders",
    "sales_lifetime_revenue",
    "sales_mean_gap_days",
    "sales_orders_30d",
    "reviews_score_mean",
    "reviews_count",
    "delivery_late_share",
    "delivery_days_ahead_of_promise",
)
# Small on purpose: shallow trees, the same early stopping as the model.
SIMPLE_BASELINE_PARAMS = ModelParams(max_depth=3, learning_rate=0.1, min_child_weight=10.0)

ORIGINAL_RECIPE_BASELINE = "original_recipe_gbm"
# The original project's (olist-ml-models) feature families: one feature-store table each,
# which it joined into its ABT for a LightGBM. Every column of theirs, days since the last
# sale (`sales_recency_days`) among them; none of the features the model derives on top
# (`lib/ml/rhythm.py`).
ORIGINAL_RECIPE_FAMILIES = ("sales", "reviews", "customers", "delivery", "payments", "products")
RECENCY_FEATURE = "sales_recency_days"
ORIGINAL_RECIPE_FEATURES = tuple(
    spec.name for spec in FEATURE_CATALOGUE if spec.family in ORIGINAL_RECIPE_FAMILIES
)
# Its tuning, modest: this grid judged by `tune_walk_forward` on the 3 walk-forward
# cutoffs before the backtest's 6 (built-in generator, scale 1, seed 42), never on the
# cutoffs it is reported on (`uv run python bench/backtest.py --tune-original`).
ORIGINAL_RECIPE_GRID: dict[str, tuple[Any, ...]] = {
    "max_depth": (3, 4, 6),
    "min_child_weight": (1.0, 10.0, 30.0),
}
ORIGINAL_RECIPE_PARAMS = ModelParams(max_depth=6, learning_rate=0.1, min_child_weight=10.0)
# The baselines the model's gaps are reported over, strongest last.
BASELINES = (RECENCY_RULE, SIMPLE_BASELINE, ORIGINAL_RECIPE_BASELINE)
REPORTED_METRICS = (
    "roc_auc",
    "pr_auc",
    "precision_top_decile",
    "lift_top_decile",
    "brier",
    "ece",
)


@dataclass(frozen=True)
class Recipe:
    """How one scorer is trained: its parameters, its features (None = every ABT
    feature) and raw XGBoost extras (e.g. monotone constraints by feature name)."""

    params: ModelParams = field(default_factory=ModelParams)
    features: tuple[str, ...] | None = None
    monotone: Mapping[str, int] = field(default_factory=dict)

    def feature_names(self, abt: pl.DataFrame) -> list[str]:
        """The recipe's features present in `abt` (a missing one is skipped, none is an
        error), so the baseline still runs on an ABT whose catalogue lacks a column."""
        if self.features is None:
            return feature_columns(abt)
        names = [f for f in self.features if f in abt.columns]
        if not names:
            raise ValueError(f"none of the recipe's features are in the ABT: {self.features}")
        return names

    def xgb_extra(self, names: Sequence[str]) -> dict[str, Any]:
        used = {k: v for k, v in self.monotone.items() if k in names}
        if not used:
            return {}
        return {"monotone_constraints": "(" + ",".join(str(used.get(n, 0)) for n in names) + ")"}


def simple_baseline() -> Recipe:
    """The strong simple baseline: a small GBM on the plain aggregates."""
    return Recipe(params=SIMPLE_BASELINE_PARAMS, features=SIMPLE_BASELINE_FEATURES)


def original_recipe_baseline(params: ModelParams = ORIGINAL_RECIPE_PARAMS) -> Recipe:
    """The original recipe plus recency: a tuned GBM on the six original feature families'
    columns (days since the last sale included), without the derived rhythm features."""
    return Recipe(params=params, features=ORIGINAL_RECIPE_FEATURES)


def baseline_recipes() -> dict[str, Recipe]:
    """The trained baselines of the backtest, by scorer name (the recency rule is not
    trained: `run_backtest(include_recency=True)`)."""
    return {
        SIMPLE_BASELINE: simple_baseline(),
        ORIGINAL_RECIPE_BASELINE: original_recipe_baseline(),
    }


def walk_forward_plans(
    cohorts: Sequence[date],
    *,
    n_cutoffs: int,
    n_valid: int = 2,
    horizon_days: int = 45,
    eval_cohorts: Sequence[date] | None = None,
) -> list[SplitPlan]:
    """One plan per cutoff (the last `n_cutoffs` evaluation cohorts), oldest first.

    For cutoff C: validation = the latest `n_valid` evaluation cohorts at least
    `horizon_days` before C; training = every cohort at least `horizon_days` before the
    first validation cohort. With monthly cohorts that is exactly `plan_time_split` with
    one cohort left out between blocks; with denser training cohorts (weekly) the same
    rule keeps every training label window closed before validation starts. Cutoffs with
    no room for training are dropped; none left is an error.
    """
    if n_cutoffs < 1 or n_valid < 1:
        raise ValueError("walk_forward_plans: n_cutoffs and n_valid must be at least 1")
    every = sorted(set(cohorts))
    evals = sorted(set(eval_cohorts if eval_cohorts is not None else every))
    gap = timedelta(days=horizon_days)
    plans = []
    for cutoff in evals[-n_cutoffs:]:  # a handful of cutoffs, not rows
        valid = [d for d in evals if d <= cutoff - gap][-n_valid:]
        if len(valid) < n_valid:
            continue
        train = [d for d in every if d <= valid[0] - gap]
        if train:
            plans.append(SplitPlan(train=train, valid=valid, test=[cutoff]))
    if not plans:
        raise ValueError(
            f"walk_forward_plans: {len(evals)} mature cohort(s) leave no cutoff with "
            f"{n_valid} validation cohort(s) and training cohorts {horizon_days} days before"
        )
    return plans


# The scorer names of calibrated variants end so (`calibrated_name`).
CALIBRATED_SUFFIXES = tuple(f"_{m}" for m in METHODS[1:])


def calibrated_name(scorer: str, method: str) -> str:
    """The table's scorer name of a calibrated variant (`none` is the scorer itself)."""
    return scorer if method == "none" else f"{scorer}_{method}"


def calibration_table(table: pl.DataFrame, scorer: str | None = MODEL) -> pl.DataFrame:
    """Mean backtest ECE, Brier and ROC AUC of `scorer` per calibration method (from a
    per-cutoff table with its calibrated variants), over the cutoffs where the methods were
    judged (`walk_forward_calibration`; `none` on the same cutoffs), lowest ECE first."""
    names = {} if scorer is None else {calibrated_name(scorer, m): m for m in METHODS}
    calibrated = [name for name, method in names.items() if method != "none"]
    judged = table.filter(pl.col("scorer").is_in(calibrated)).get_column("cutoff").to_list()
    return (
        table.filter(pl.col("scorer").is_in(list(names)) & pl.col("cutoff").is_in(judged))
        .group_by("scorer")
        .agg(
            pl.len().alias("cutoffs"),
            pl.col("ece").mean(),
            pl.col("ece").max().alias("ece_max"),
            pl.col("brier").mean(),
            pl.col("roc_auc").mean(),
        )
        .with_columns(
            pl.col("scorer").replace_strict(names, return_dtype=pl.String).alias("method")
        )
        .select("method", "cutoffs", "ece", "ece_max", "brier", "roc_auc")
        .sort("ece", "brier")
    )


def choose_calibration(table: pl.DataFrame, scorer: str | None = MODEL) -> str:
    """The simplest calibration (METHODS order: Platt, beta, isotonic) whose mean ECE on
    the cutoffs it was not fitted on is within one standard error of the best one's (the
    error of their per-cutoff differences); `none` when the table holds no calibrated
    variants. `none` itself is the reference, never chosen: a fitted map follows the churn
    rate of the latest matured cohorts, the model's own probabilities do not.

    Why not simply the lowest ECE: with a handful of cutoffs the methods' ECEs differ by
    less than they move from cutoff to cutoff, and a flexible map (isotonic) saturates at
    the extreme scores, where its blocks are smallest."""
    if scorer is None:
        return "none"
    names = {calibrated_name(scorer, m): m for m in METHODS[1:]}
    wide = (
        table.filter(pl.col("scorer").is_in(list(names)))
        .pivot(on="scorer", index="cutoff", values="ece")
        .drop_nulls()
    )
    if wide.height == 0:
        return "none"
    ece = {m: wide.get_column(n).to_numpy() for n, m in names.items() if n in wide.columns}
    best = min(ece, key=lambda m: float(ece[m].mean()))
    for method, values in ece.items():  # simplest first
        diff = values - ece[best]
        error = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
        if float(diff.mean()) <= error:
            return method
    return best


@dataclass
class BacktestResult:
    """Per-cutoff metrics and the scored rows of every scorer (calibrated variants of the
    calibrated recipe are scorers of their own, e.g. `model_platt`, at the cutoffs where
    earlier matured cutoffs could fit them; null scores elsewhere)."""

    table: pl.DataFrame  # cutoff, scorer, rows, churn_rate, metrics
    scores: pl.DataFrame  # cutoff, seller_id, churned, one column per scorer
    plans: list[SplitPlan]
    seconds: float
    calibrated: str | None = MODEL
    best_iterations: dict[str, list[int]] = field(default_factory=dict)

    def cutoffs(self) -> list[date]:
        return [p.test[0] for p in self.plans]

    def calibration(self) -> pl.DataFrame:
        """Mean ECE, Brier and ROC AUC per calibration method on the cutoffs it was not
        fitted on, best first."""
        return calibration_table(self.table, self.calibrated)

    def chosen_calibration(self) -> str:
        """The simplest method within one standard error of the lowest mean ECE on
        unseen cutoffs (`choose_calibration`)."""
        return choose_calibration(self.table, self.calibrated)


def _rows(frame: pl.DataFrame, dates: Sequence[date]) -> pl.DataFrame:
    return frame.filter(pl.col("reference_date").is_in(list(dates)))


def _metric_row(cutoff: date, scorer: str, y: np.ndarray, s: np.ndarray) -> dict[str, Any]:
    """One row of the backtest table: a scorer's metrics at a cutoff."""
    m = evaluate_scores(y, s)
    head = {"cutoff": cutoff, "scorer": scorer, "rows": int(y.size), "churn_rate": m["base_rate"]}
    return head | {k: m[k] for k in REPORTED_METRICS}


def walk_forward_calibration(
    scores: pl.DataFrame, scorer: str = MODEL, *, horizon_days: int = 45
) -> tuple[list[dict[str, Any]], pl.DataFrame]:
    """Each calibration method judged on cutoffs it did not see.

    For cutoff C, each method of METHODS (but `none`) is fitted on `scorer`'s out-of-time
    scores at the earlier cutoffs whose labels had matured by C (at least `horizon_days`
    before it, the gap rule of `walk_forward_plans`) and applied to C's scores; cutoffs
    without such history (or with one label class only) are not judged. Returns the
    backtest table's rows of the judged cutoffs (scorer `<scorer>_<method>`) and `scores`
    with one column per method (null where not judged).
    """
    dates = scores.get_column("cutoff")
    y_all = scores.get_column(LABEL).to_numpy().astype(np.float64)
    s_all = scores.get_column(scorer).to_numpy()
    methods = METHODS[1:]
    columns = {m: np.full(scores.height, np.nan) for m in methods}
    rows: list[dict[str, Any]] = []
    for cutoff in sorted(dates.unique()):  # a handful of cutoffs, not rows
        seen = (dates <= cutoff - timedelta(days=horizon_days)).to_numpy()
        if np.unique(y_all[seen]).size < 2:
            continue
        here = (dates == cutoff).to_numpy()
        for method in methods:
            calibrator = fit_calibrator(y_all[seen], s_all[seen], method)
            columns[method][here] = calibrator.apply(s_all[here])
            name = calibrated_name(scorer, method)
            rows.append(_metric_row(cutoff, name, y_all[here], columns[method][here]))
    calibrated = scores.with_columns(
        pl.Series(calibrated_name(scorer, m), v, dtype=pl.Float64).fill_nan(None)
        for m, v in columns.items()
    )
    return rows, calibrated


def run_backtest(
    abt: pl.DataFrame,
    plans: Sequence[SplitPlan],
    recipes: Mapping[str, Recipe],
    *,
    calibrate: str | None = MODEL,
    include_recency: bool = True,
    horizon_days: int = 45,
) -> BacktestResult:
    """Train every recipe for every plan and score the plan's cutoff cohort.

    The recipe named `calibrate` also gets each calibration method judged on the cutoffs
    it was not fitted on (`walk_forward_calibration`, labels maturing after
    `horizon_days`): scorers `<name>_platt`, `<name>_beta` and `<name>_isotonic`.
    """
    started = time.perf_counter()
    metric_rows: list[dict[str, Any]] = []
    score_parts: list[pl.DataFrame] = []
    best: dict[str, list[int]] = {name: [] for name in recipes}
    for plan in plans:  # one iteration per cutoff
        train, valid, test = (_rows(abt, getattr(plan, b)) for b in ("train", "valid", "test"))
        cutoff = plan.test[0]
        y = test.get_column(LABEL).to_numpy()
        scores: dict[str, np.ndarray] = {}
        for name, recipe in recipes.items():
            names = recipe.feature_names(abt)
            booster, best_it = fit_booster(
                train, valid, names, recipe.params, extra=recipe.xgb_extra(names)
            )
            best[name].append(best_it)
            scores[name] = predict(booster, test, names)
        if include_recency:
            rate = float(train.get_column(LABEL).mean())
            scores[RECENCY_RULE] = baseline_scores(test, train_base_rate=rate)[RECENCY_RULE]
        metric_rows += [_metric_row(cutoff, name, y, s) for name, s in scores.items()]
        score_parts.append(
            test.select(pl.col("reference_date").alias("cutoff"), "seller_id", LABEL).with_columns(
                pl.Series(name, s, dtype=pl.Float64) for name, s in scores.items()
            )
        )
    scored = pl.concat(score_parts)
    if calibrate in recipes:
        calibrated_rows, scored = walk_forward_calibration(
            scored, calibrate, horizon_days=horizon_days
        )
        metric_rows += calibrated_rows
    return BacktestResult(
        table=pl.DataFrame(metric_rows),
        scores=scored,
        plans=list(plans),
        seconds=time.perf_counter() - started,
        calibrated=calibrate if calibrate in recipes else None,
        best_iterations=best,
    )


def mean_table(table: pl.DataFrame) -> pl.DataFrame:
    """Mean and standard deviation over the cutoffs, one row per scorer, best AUC first;
    without the calibrated variants, judged on fewer cutoffs (see `calibration_table`)."""
    return (
        table.filter(
            ~pl.any_horizontal(pl.col("scorer").str.ends_with(s) for s in CALIBRATED_SUFFIXES)
        )
        .group_by("scorer", maintain_order=True)
        .agg(
            pl.len().alias("cutoffs"),
            *[pl.col(m).mean().alias(m) for m in REPORTED_METRICS],
            pl.col("roc_auc").std().alias("roc_auc_std"),
            pl.col("roc_auc").min().alias("roc_auc_min"),
        )
        .sort("roc_auc", descending=True)
    )


@dataclass(frozen=True)
class Gap:
    """Per-cutoff difference of one metric between two scorers, with a t interval."""

    metric: str
    model: str
    baseline: str
    mean: float
    ci_low: float
    ci_high: float
    min: float
    wins: int
    n: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def text(self) -> str:
        return (
            f"{self.model} - {self.baseline} {self.metric}: {self.mean:+.4f} "
            f"(95% CI {self.ci_low:+.4f} .. {self.ci_high:+.4f}; worst cutoff {self.min:+.4f}; "
            f"better at {self.wins} of {self.n} cutoffs)"
        )


def gap(
    table: pl.DataFrame,
    *,
    model: str = MODEL,
    baseline: str = SIMPLE_BASELINE,
    metric: str = "roc_auc",
    level: float = 0.95,
) -> Gap:
    """Mean paired gap over the cutoffs (model minus baseline; sign flipped for metrics
    where lower is better) and its Student-t confidence interval."""
    wide = table.pivot(on="scorer", index="cutoff", values=metric).sort("cutoff")
    diff = (wide.get_column(model) - wide.get_column(baseline)).to_numpy()
    if metric in LOWER_IS_BETTER:
        diff = -diff
    n = diff.size
    mean = float(diff.mean())
    if n > 1:
        from scipy import stats

        half = float(stats.t.ppf(0.5 + level / 2, n - 1) * diff.std(ddof=1) / np.sqrt(n))
    else:
        half = float("nan")
    return Gap(
        metric=metric,
        model=model,
        baseline=baseline,
        mean=mean,
        ci_low=mean - half,
        ci_high=mean + half,
        min=float(diff.min()),
        wins=int((diff > 0).sum()),
        n=n,
    )


def baseline_gaps(
    table: pl.DataFrame,
    *,
    model: str = MODEL,
    metrics: Sequence[str] = ("roc_auc", "precision_top_decile"),
) -> list[Gap]:
    """The model's gap over every baseline of BASELINES in `table`, for each metric."""
    present = set(table.get_column("scorer"))
    return [
        gap(table, model=model, baseline=b, metric=m)
        for m in metrics
        for b in BASELINES
        if b in present
    ]


def backtest_figure(table: pl.DataFrame, model_gap: Gap) -> Figure:
    """ROC AUC of every scorer at every cutoff, and the model's gap over the baseline."""
    fig = new_figure((10.0, 4.2))
    auc_ax, gap_ax = fig.subplots(1, 2)
    wide = table.pivot(on="scorer", index="cutoff", values="roc_auc").sort("cutoff")
    labels = [d.isoformat() for d in wide.get_column("cutoff").to_list()]
    x = np.arange(len(labels))
    for scorer in [
        c for c in wide.columns if c != "cutoff" and not c.endswith(CALIBRATED_SUFFIXES)
    ]:
        auc_ax.plot(x, wide.get_column(scorer).to_numpy(), marker="o", label=scorer)
    auc_ax.set(title="ROC AUC per cutoff", ylabel="ROC AUC", xticks=x)
    auc_ax.set_xticklabels(labels, rotation=45, ha="right", fontsize="small")
    auc_ax.legend(loc="lower left", fontsize="small")
    diff = (wide.get_column(model_gap.model) - wide.get_column(model_gap.baseline)).to_numpy()
    gap_ax.bar(x, diff, color=np.where(diff >= 0, "tab:green", "tab:red"))
    gap_ax.axhline(model_gap.mean, c="k", lw=1, label=f"mean {model_gap.mean:+.4f}")
    if np.isfinite(model_gap.ci_low):
        gap_ax.axhspan(
            model_gap.ci_low, model_gap.ci_high, color="grey", alpha=0.25, label="95% CI"
        )
    gap_ax.axhline(0.0, c="grey", ls=":", lw=1)
    gap_ax.set(title=f"{model_gap.model} - {model_gap.baseline} (ROC AUC)", ylabel="gap", xticks=x)
    gap_ax.set_xticklabels(labels, rotation=45, ha="right", fontsize="small")
    gap_ax.legend(loc="lower left", fontsize="small")
    return fig


def backtest_model(
    abt: pl.DataFrame,
    params: ModelParams,
    *,
    n_cutoffs: int,
    n_valid: int = 2,
    horizon_days: int = 45,
    features: Sequence[str] | None = None,
    baselines: bool = True,
) -> BacktestResult:
    """The project's backtest of one model recipe (all ABT features unless `features`)
    over the last `n_cutoffs` cohorts of `abt`, with the simple baseline, the original
    recipe plus recency and the recency rule when `baselines`: what the backtest asset
    reports and the champion gate reruns."""
    plans = walk_forward_plans(
        abt.get_column("reference_date").unique().to_list(),
        n_cutoffs=n_cutoffs,
        n_valid=n_valid,
        horizon_days=horizon_days,
    )
    recipes = {MODEL: Recipe(params=params, features=None if features is None else tuple(features))}
    if baselines:
        recipes |= baseline_recipes()
    return run_backtest(abt, plans, recipes, include_recency=baselines, horizon_days=horizon_days)


def params_key(params: ModelParams) -> str:
    """A stable text of a recipe's parameters, stored beside backtest rows so a later
    step can tell whether they describe the recipe it trains."""
    return json.dumps(asdict(params), sort_keys=True)


def tune_walk_forward(
    abt: pl.DataFrame,
    plans: Sequence[SplitPlan],
    grid: Mapping[str, Sequence[Any]],
    *,
    base: ModelParams | None = None,
    features: Sequence[str] | None = None,
) -> tuple[ModelParams, pl.DataFrame]:
    """Pick ModelParams by mean ROC AUC over walk-forward cutoffs, not one split.

    Pass plans whose cutoffs precede the ones you report (e.g. all but the last N), or the
    winner's backtest is optimistic by the selection itself. Returns the best params and
    one row per combination (mean, spread and worst cutoff AUC, and `per_cutoff`: its
    backtest rows, cutoff and REPORTED_METRICS), best first.
    """
    base = base or ModelParams()
    known = set(asdict(base))
    unknown = sorted(set(grid) - known)
    if unknown:
        raise ValueError(f"tune_walk_forward: unknown parameter(s) {unknown}")
    rows: list[dict[str, Any]] = []
    for combo in itertools.product(*grid.values()):  # a few combinations
        values = dict(zip(grid, combo, strict=True))
        recipe = Recipe(
            params=replace(base, **values),
            features=None if features is None else tuple(features),
        )
        result = run_backtest(abt, plans, {MODEL: recipe}, calibrate=None, include_recency=False)
        auc = result.table.get_column("roc_auc")
        rows.append(
            values
            | {
                "mean_roc_auc": float(auc.mean()),
                "std_roc_auc": float(auc.std() or 0.0),
                "min_roc_auc": float(auc.min()),
                "seconds": result.seconds,
                "per_cutoff": result.table.select("cutoff", *REPORTED_METRICS).to_dicts(),
            }
        )
    table = pl.DataFrame(rows).sort("mean_roc_auc", descending=True)
    return replace(base, **{k: table[k][0] for k in grid}), table
