"""The walk-forward backtest asset: the model judged at the last N mature monthly cutoffs,
next to the recency rule, a small GBM on plain seller aggregates and the original recipe
plus recency (a tuned GBM on the six original feature families' columns)."""

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource
from pydantic import Field

from olist_churn_dagster.defs.metadata import table_value
from olist_churn_dagster.defs.ml.assets import (
    ABT_KEY,
    BACKTEST_KEY,
    MODEL_GROUP,
    TrainingConfig,
)
from olist_churn_dagster.defs.ml.resources import MlflowTracking
from olist_churn_dagster.defs.settings import ChurnSettings
from olist_churn_dagster.defs.versions import BACKTEST_VERSION
from olist_churn_dagster.defs.warehouse import WAREHOUSE_POOL
from olist_churn_dagster.lib.markdown import png_markdown
from olist_churn_dagster.lib.ml.backtest import (
    MODEL,
    ORIGINAL_RECIPE_BASELINE,
    SIMPLE_BASELINE,
    BacktestResult,
    Gap,
    backtest_figure,
    backtest_model,
    baseline_gaps,
    calibrated_name,
    gap,
    mean_table,
    params_key,
)
from olist_churn_dagster.lib.ml.calibration import METHODS
from olist_churn_dagster.lib.ml.plots import calibration_figure
from olist_churn_dagster.lib.ml.tracking import log_backtest

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class BacktestConfig(TrainingConfig):
    """The model's hyperparameters (as for ml/churn_model) plus the walk-forward settings;
    n_test_cohorts and gap_cohorts do not apply (one cutoff at a time, horizon-wide gaps)."""

    n_cutoffs: int = Field(
        default=0, description="cutoffs to backtest; 0: OLIST_CHURN_BACKTEST_CUTOFFS (6)"
    )


def _backtest_figures(result: BacktestResult, vs_simple: Gap) -> dict[str, "Figure"]:
    """The per-cutoff plot and the reliability curves of the cutoffs where the
    calibrations were judged (each fitted on earlier ones), pooled."""
    names = [MODEL, *(calibrated_name(MODEL, m) for m in METHODS[1:]), SIMPLE_BASELINE]
    scores = result.scores.drop_nulls(names)
    y = scores.get_column("churned").to_numpy()
    reliability = {name: scores.get_column(name).to_numpy() for name in names}
    return {
        "backtest": backtest_figure(result.table, vs_simple),
        "reliability (judged cutoffs pooled)": calibration_figure(y, reliability),
    }


def _backtest_summary(
    result: BacktestResult, means: pl.DataFrame, gaps: list[Gap]
) -> dict[str, float]:
    """The figures MLflow keeps of a backtest: each scorer's mean ROC AUC and top-decile
    precision over the cutoffs, and the model's gaps over each baseline."""
    calibrated = result.calibration().filter(pl.col("method") == result.chosen_calibration())
    summary: dict[str, float] = {}
    for metric in ("roc_auc", "precision_top_decile"):
        for row in means.iter_rows(named=True):
            summary[f"mean_{metric}_{row['scorer']}"] = float(row[metric])
    for g in gaps:
        suffix = "" if g.metric == "roc_auc" else f"_{g.metric}"
        summary[f"gap_vs_{g.baseline}{suffix}"] = g.mean
        if g.metric == "roc_auc":
            summary[f"gap_vs_{g.baseline}_ci_low"] = g.ci_low
            summary[f"gap_vs_{g.baseline}_ci_high"] = g.ci_high
    summary["mean_ece_calibrated"] = (
        float(calibrated["ece"][0]) if calibrated.height else float("nan")
    )
    summary["seconds"] = result.seconds
    return summary


def backtest_metadata(
    result: BacktestResult,
) -> tuple[dict[str, Any], dict[str, "Figure"], dict[str, float]]:
    """Per-cutoff tables, means, the gaps with their intervals and the two plots for the
    UI; the figures and a summary for MLflow."""
    table = result.table
    vs_simple = gap(table)
    gaps = baseline_gaps(table)
    means = mean_table(table)
    wide = table.pivot(on="scorer", index="cutoff", values="roc_auc").sort("cutoff")
    figures = _backtest_figures(result, vs_simple)
    summary = _backtest_summary(result, means, gaps)
    # mean_table leaves the calibrated variants out: one mean per scorer.
    headline = [k for k in summary if k.startswith(("mean_roc_auc_", "mean_precision_top"))]
    headline += [f"gap_vs_{g.baseline}" for g in gaps if g.metric == "roc_auc"]
    metadata = {
        "cutoffs": len(result.plans),
        **{k: summary[k] for k in headline},
        **{
            f"gap_vs_{g.baseline}_ci95": dg.MetadataValue.json(
                [round(g.ci_low, 5), round(g.ci_high, 5)]
            )
            for g in gaps
            if g.metric == "roc_auc"
        },
        "gap_summary": dg.MetadataValue.md("\n".join(f"- {g.text()}" for g in gaps)),
        "calibration": result.chosen_calibration(),
        "mean_ece_calibrated": summary["mean_ece_calibrated"],
        "roc_auc_per_cutoff": table_value(wide, max_rows=60),
        "means_over_cutoffs": table_value(means),
        "calibration_methods": table_value(result.calibration()),
        "per_cutoff_metrics": table_value(table, max_rows=200),
        "seconds": round(result.seconds, 1),
        "plots": dg.MetadataValue.md(png_markdown(figures)),
    }
    return metadata, figures, summary


@dg.asset(
    key=BACKTEST_KEY,
    group_name=MODEL_GROUP,
    code_version=BACKTEST_VERSION,
    description="Walk-forward backtest over the last N mature monthly cutoffs: for each, "
    "the model, a small GBM on plain seller aggregates and the original recipe plus "
    "recency (a tuned GBM on the six original feature families) are trained on matured "
    "cohorts only and scored on the cutoff, beside the recency rule. Per-cutoff table, "
    "mean gaps with 95% intervals, top-decile precision, calibration methods and plots; "
    "logged to MLflow.",
    ins={"abt": dg.AssetIn(key=ABT_KEY)},
    kinds={"xgboost", "mlflow", "polars"},
    pool=WAREHOUSE_POOL,
)
def backtest(
    context: dg.AssetExecutionContext,
    config: BacktestConfig,
    abt: pl.DataFrame,
    mlflow: MlflowTracking,
    settings: ChurnSettings,
) -> pl.DataFrame:
    result = backtest_model(
        abt,
        config.model_params(),
        n_cutoffs=config.n_cutoffs or settings.backtest_cutoffs,
        n_valid=config.n_valid_cohorts,
        horizon_days=settings.churn_horizon_days,
    )
    metadata, figures, summary = backtest_metadata(result)
    run_id = log_backtest(
        result.table,
        summary,
        figures,
        tracking_uri=mlflow.ready_uri(),
        experiment=mlflow.experiment,
        run_name=f"backtest-{context.run.run_id[:8]}",
        params={**asdict(config.model_params()), "calibration": metadata["calibration"]},
        tags={"dagster_run_id": context.run.run_id},
        artifact_location=mlflow.artifact_root(),
    )
    context.add_output_metadata({**metadata, "mlflow_run_id": run_id})
    return result.table.with_columns(
        model_params=pl.when(pl.col("scorer") == MODEL).then(
            pl.lit(params_key(config.model_params()))
        )
    )


def _gap_check(warehouse: DuckDBResource, baseline: str) -> dg.AssetCheckResult:
    """The model's mean backtest ROC AUC gap over `baseline`, passed when positive."""
    with warehouse.get_connection() as conn:
        table = conn.execute(
            "SELECT cutoff, scorer, roc_auc FROM ml.backtest WHERE scorer IN (?, ?)",
            [MODEL, baseline],
        ).pl()
    result = gap(table, baseline=baseline)
    return dg.AssetCheckResult(
        passed=result.mean > 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "gap_mean": result.mean,
            "gap_ci95": dg.MetadataValue.json([result.ci_low, result.ci_high]),
            "cutoffs_won": f"{result.wins} of {result.n}",
        },
    )


@dg.asset_check(
    asset=BACKTEST_KEY,
    name="model_beats_simple_baseline",
    description="The model's mean backtest ROC AUC is above the small GBM on plain "
    "aggregates; a warning, not a failure: the gap is the model's reason to exist.",
    pool=WAREHOUSE_POOL,
)
def model_beats_simple_baseline(warehouse: DuckDBResource) -> dg.AssetCheckResult:
    return _gap_check(warehouse, SIMPLE_BASELINE)


@dg.asset_check(
    asset=BACKTEST_KEY,
    name="model_beats_original_recipe",
    description="The model's mean backtest ROC AUC is above the original recipe plus "
    "recency (a tuned GBM on the six original feature families, without the rhythm "
    "features); a warning, not a failure.",
    pool=WAREHOUSE_POOL,
)
def model_beats_original_recipe(warehouse: DuckDBResource) -> dg.AssetCheckResult:
    return _gap_check(warehouse, ORIGINAL_RECIPE_BASELINE)
