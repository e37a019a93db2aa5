"""The analytical base table, the churn model (MLflow-tracked, champion-gated) and the
daily churn scores."""

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource
from pydantic import Field

from olist_churn_dagster.defs.features.assets import (
    feature_asset_key,
    partition_dates,
)
from olist_churn_dagster.defs.metadata import table_value
from olist_churn_dagster.defs.ml.resources import MlflowTracking
from olist_churn_dagster.defs.partitions import (
    PARTITION_METADATA,
    reference_date_partitions,
    registered_dates,
)
from olist_churn_dagster.defs.raw.assets import raw_asset_key
from olist_churn_dagster.defs.settings import ChurnSettings
from olist_churn_dagster.defs.versions import ABT_VERSION, MODEL_VERSION, SCORES_VERSION
from olist_churn_dagster.defs.warehouse import WAREHOUSE_POOL, table_asset_key
from olist_churn_dagster.lib.features import FEATURE_CATALOGUE, FEATURE_FAMILIES
from olist_churn_dagster.lib.features.store import read_feature_tables
from olist_churn_dagster.lib.ingest.delta import loaded_fingerprint
from olist_churn_dagster.lib.markdown import png_markdown
from olist_churn_dagster.lib.ml.abt import build_abt, cohort_dates
from olist_churn_dagster.lib.ml.backtest import MODEL as MODEL_SCORER
from olist_churn_dagster.lib.ml.backtest import (
    backtest_model,
    calibration_table,
    choose_calibration,
    params_key,
    tune_walk_forward,
    walk_forward_plans,
)
from olist_churn_dagster.lib.ml.calibration import Calibrator, fit_calibrator
from olist_churn_dagster.lib.ml.labels import churn_labels
from olist_churn_dagster.lib.ml.model import (
    ModelParams,
    SplitPlan,
    TrainResult,
    plan_time_split,
    train_churn_model,
)
from olist_churn_dagster.lib.ml.rhythm import add_rhythm_features, model_frame
from olist_churn_dagster.lib.ml.scoring import (
    BAND_ORDER,
    account_manager_view,
    export_per_date,
    score_sellers,
)
from olist_churn_dagster.lib.ml.tracking import (
    CHAMPION_ALIAS,
    GateDecision,
    RegisteredModelInfo,
    backtest_champion_gate,
    load_champion,
    log_and_register,
    log_calibration,
    provenance_params,
)
from olist_churn_dagster.lib.tables import ABT_TABLE, KEYS, RAW_SCHEMA, SCORES_TABLE
from olist_churn_dagster.lib.versions import catalogue_hash, git_commit
from olist_churn_dagster.lib.warehouse import read_tables

MODEL_GROUP = "model"
SCORING_GROUP = "scoring"
ABT_KEY = table_asset_key(ABT_TABLE)
MODEL_KEY = dg.AssetKey(["ml", "churn_model"])
SCORES_KEY = table_asset_key(SCORES_TABLE)
BACKTEST_KEY = dg.AssetKey(["ml", "backtest"])
FEATURE_KEYS = [feature_asset_key(f) for f in FEATURE_FAMILIES]
_DEFAULTS = ModelParams()


def mature_cohorts(
    keys: list[str], last_purchase: date, *, horizon_days: int, cohort_day: int
) -> list[date]:
    """Monthly cohort dates (among the registered `keys`) whose labels have all matured by
    the data's end."""
    if not keys:
        raise ValueError("no reference dates registered yet: materialize the raw tables first")
    first, last = date.fromisoformat(keys[0]), date.fromisoformat(keys[-1])
    horizon = timedelta(days=horizon_days)
    return [
        d
        for d in cohort_dates(first, last, day=cohort_day)
        if d - timedelta(days=1) + horizon < last_purchase
    ]


@dg.asset(
    key=ABT_KEY,
    group_name=MODEL_GROUP,
    code_version=ABT_VERSION,
    description="Monthly cohorts of active sellers: all six feature tables, the rhythm "
    "features derived from them, and the churn label; mature rows only.",
    deps=[*FEATURE_KEYS, raw_asset_key("orders"), raw_asset_key("order_items")],
    kinds={"duckdb", "polars"},
    pool=WAREHOUSE_POOL,
)
def abt(
    context: dg.AssetExecutionContext, warehouse: DuckDBResource, settings: ChurnSettings
) -> pl.DataFrame:
    with warehouse.get_connection() as conn:
        raw = read_tables(conn, RAW_SCHEMA, ["orders", "order_items"])
        last_purchase = raw["orders"].get_column("order_purchase_timestamp").max().date()
        cohorts = mature_cohorts(
            registered_dates(context.instance),
            last_purchase,
            horizon_days=settings.churn_horizon_days,
            cohort_day=settings.cohort_day,
        )
        tables = read_feature_tables(conn, cohorts)
    spine = tables["sales"].select(KEYS)
    labels = churn_labels(
        raw["orders"], raw["order_items"], spine, horizon_days=settings.churn_horizon_days
    )
    table = add_rhythm_features(
        build_abt(tables, labels),
        horizon_days=settings.churn_horizon_days,
        window_days=settings.feature_window_days,
    )
    per_cohort = (
        table.group_by("reference_date")
        .agg(pl.len().alias("rows"), pl.col("churned").mean().round(4).alias("churn_rate"))
        .sort("reference_date")
    )
    context.add_output_metadata(
        {
            "cohorts": per_cohort.height,
            "features": len(table.columns) - 3,
            "churn_rate": float(table.get_column("churned").mean() or 0.0),
            "rows_and_churn_rate_per_cohort": table_value(per_cohort, max_rows=60),
        }
    )
    return table


class TrainingConfig(dg.Config):
    n_test_cohorts: int = Field(default=3, description="latest mature cohorts held out (OOT)")
    n_valid_cohorts: int = Field(default=2, description="cohorts before them for early stop")
    gap_cohorts: int = Field(default=1, description="cohorts left out between blocks")
    max_depth: int = _DEFAULTS.max_depth
    learning_rate: float = _DEFAULTS.learning_rate
    n_estimators: int = _DEFAULTS.n_estimators
    min_child_weight: float = _DEFAULTS.min_child_weight
    subsample: float = _DEFAULTS.subsample
    colsample_bytree: float = _DEFAULTS.colsample_bytree
    reg_lambda: float = _DEFAULTS.reg_lambda
    early_stopping_rounds: int = _DEFAULTS.early_stopping_rounds
    seed: int = _DEFAULTS.seed
    promotion_metric: str = Field(default="roc_auc", description="metric of the champion gate")
    promotion_tolerance: float = Field(
        default=0.0, description="how much worse than the champion a candidate may be"
    )

    def model_params(self) -> ModelParams:
        return ModelParams(
            **{k: getattr(self, k) for k in ModelParams.__dataclass_fields__ if hasattr(self, k)}
        )

    def split_plan(self, abt: pl.DataFrame, horizon_days: int) -> SplitPlan:
        """The ABT's cohorts split into train, validation and out-of-time test blocks."""
        return plan_time_split(
            abt.get_column("reference_date").unique().sort().to_list(),
            n_test=self.n_test_cohorts,
            n_valid=self.n_valid_cohorts,
            gap=self.gap_cohorts,
            horizon_days=horizon_days,
        )


class ChurnModelConfig(TrainingConfig):
    """The training config plus an optional tuning grid (e.g. {"max_depth": [4, 6]}):
    with one, the parameters are the best candidate by mean ROC AUC over walk-forward
    cutoffs before the backtest's, each candidate an MLflow child run of the training run."""

    tuning_grid: dict[str, list[float]] = Field(
        default_factory=dict, description="ModelParams field -> values to try; empty: no tuning"
    )
    tuning_cutoffs: int = Field(default=3, description="cutoffs the candidates are judged on")


def tune(
    abt: pl.DataFrame, backtest: pl.DataFrame, config: ChurnModelConfig, horizon_days: int
) -> tuple[ModelParams, pl.DataFrame | None]:
    """The configured parameters, or with a tuning grid the best candidate and every
    candidate's figures (`tune_walk_forward`), judged on the cutoffs before the backtest's
    so that the backtest and the gate judge the chosen recipe on cutoffs it was not picked
    on."""
    base = config.model_params()
    if not config.tuning_grid:
        return base, None
    first = backtest.get_column("cutoff").min()
    earlier = abt.get_column("reference_date").filter(abt.get_column("reference_date") < first)
    plans = walk_forward_plans(
        earlier.unique().to_list(),
        n_cutoffs=config.tuning_cutoffs,
        n_valid=config.n_valid_cohorts,
        horizon_days=horizon_days,
    )
    grid = {k: [type(getattr(base, k))(v) for v in vs] for k, vs in config.tuning_grid.items()}
    return tune_walk_forward(abt, plans, grid, base=base)


def provenance(warehouse: DuckDBResource) -> dict[str, str]:
    """The raw load's fingerprint, the feature catalogue's hash and the code's commit."""
    with warehouse.get_connection() as conn:
        raw = loaded_fingerprint(conn)
    return provenance_params(raw, catalogue_hash(FEATURE_CATALOGUE), git_commit())


def calibrate(result: TrainResult, backtest: pl.DataFrame) -> tuple[Calibrator, dict[str, Any]]:
    """Fit the calibration the backtest chose (lowest mean ECE on cutoffs it was not fitted
    on) on the model's out-of-time cohorts: the latest matured labels, scored by this very
    booster, which never trained on them."""
    method = choose_calibration(backtest)
    calibrator = fit_calibrator(
        result.test_frame.get_column("churned").to_numpy(),
        result.test_frame.get_column("score").to_numpy(),
        method,
    )
    chosen = calibration_table(backtest).filter(pl.col("method") == method)
    return calibrator, {
        "calibration": method,
        "oot_ece": result.metrics["ece"],
        "backtest_ece_unseen_cutoffs": float(chosen["ece"][0]) if chosen.height else float("nan"),
        "calibration_by_backtest": table_value(calibration_table(backtest)),
    }


def _gate_tables(
    candidate: pl.DataFrame, champion: pl.DataFrame | None, decision: GateDecision
) -> dict[str, dg.MetadataValue]:
    """The candidate's and the champion's per-cutoff figures, as the gate compared them."""
    shown = ["cutoff", "rows", "roc_auc", "pr_auc", "brier", "ece"]
    return {
        "gate_candidate_backtest": table_value(candidate.select(shown)),
        "gate_champion_backtest": table_value(champion.select(shown))
        if champion is not None
        else dg.MetadataValue.text(f"no champion backtest: {decision.reason}"),
    }


def backtest_gate(
    abt: pl.DataFrame,
    backtest: pl.DataFrame,
    config: TrainingConfig,
    *,
    params: ModelParams,
    uri: str,
    candidate_version: str,
    horizon_days: int,
) -> tuple[GateDecision, dict[str, dg.MetadataValue]]:
    """The champion gate on the backtest's cutoffs: the candidate's (`params`) per-cutoff
    rows come from ml/backtest when it backtested this recipe (else they are rerun); the
    champion's recipe is rerun on the same cutoffs. Returns the decision and both tables."""
    rows = backtest.filter(pl.col("scorer") == MODEL_SCORER)

    def rerun(recipe: ModelParams, features: Sequence[str] | None) -> pl.DataFrame:
        result = backtest_model(
            abt,
            recipe,
            n_cutoffs=rows.height,
            n_valid=config.n_valid_cohorts,
            horizon_days=horizon_days,
            features=features,
            baselines=False,
        )
        return result.table.filter(pl.col("scorer") == MODEL_SCORER)

    if "model_params" not in rows.columns or rows["model_params"][0] != params_key(params):
        rows = rerun(params, None)
    decision, champion_rows = backtest_champion_gate(
        tracking_uri=uri,
        candidate_version=candidate_version,
        candidate_params=params,
        candidate_table=rows,
        rerun=rerun,
        abt_columns=abt.columns,
        metric=config.promotion_metric,
        tolerance=config.promotion_tolerance,
    )
    return decision, _gate_tables(rows, champion_rows, decision)


def _model_metadata(
    result: TrainResult, registered: RegisteredModelInfo, decision: GateDecision, plan: SplitPlan
) -> dict[str, Any]:
    """What the UI shows of a training: the registered version, the gate's decision, the
    out-of-time figures beside the baselines, the top features and the plots."""
    return {
        "mlflow_run_id": registered.run_id,
        "model_version": registered.model_version,
        "model_uri": registered.model_uri,
        "promoted": decision.promoted,
        "promotion_decision": decision.reason,
        "candidate_score": decision.candidate_score,
        "champion_score": decision.champion_score
        if decision.champion_score is not None
        else dg.MetadataValue.null(),
        "oot_roc_auc": result.metrics["roc_auc"],
        "oot_pr_auc": result.metrics["pr_auc"],
        "recency_rule_roc_auc": result.baselines["recency_rule"]["roc_auc"],
        "best_iteration": result.best_iteration,
        "rows": dg.MetadataValue.json(result.n_rows),
        "split": dg.MetadataValue.json(plan.as_dict()),
        "oot_metrics_vs_baselines": table_value(result.comparison_table()),
        "top_features": table_value(result.importance, max_rows=15),
        "plots": dg.MetadataValue.md(png_markdown(result.figures)),
    }


@dg.asset(
    key=MODEL_KEY,
    group_name=MODEL_GROUP,
    code_version=MODEL_VERSION,
    description="XGBoost churn model: trained on earlier cohorts, early-stopped on later "
    "ones, tested out of time; logged and registered in MLflow, promoted to "
    f"'{CHAMPION_ALIAS}' only when its mean walk-forward backtest AUC is not worse than the "
    "current champion's recipe on the same cutoffs.",
    ins={"abt": dg.AssetIn(key=ABT_KEY), "backtest": dg.AssetIn(key=BACKTEST_KEY)},
    kinds={"xgboost", "mlflow"},
    pool=WAREHOUSE_POOL,
)
def churn_model(
    context: dg.AssetExecutionContext,
    config: ChurnModelConfig,
    abt: pl.DataFrame,
    backtest: pl.DataFrame,
    mlflow: MlflowTracking,
    settings: ChurnSettings,
    warehouse: DuckDBResource,
) -> dg.MaterializeResult:
    plan = config.split_plan(abt, settings.churn_horizon_days)
    params, candidates = tune(abt, backtest, config, settings.churn_horizon_days)
    result = train_churn_model(abt, plan, params)
    uri = mlflow.ready_uri()
    registered = log_and_register(
        result,
        tracking_uri=uri,
        experiment=mlflow.experiment,
        run_name=f"dagster-{context.run.run_id[:8]}",
        extra_params=provenance(warehouse),
        tags={"dagster_run_id": context.run.run_id},
        artifact_location=mlflow.artifact_root(),
        candidates=candidates,
    )
    calibrator, calibration_metadata = calibrate(result, backtest)
    log_calibration(uri, registered.run_id, registered.model_version, calibrator)
    decision, gate_tables = backtest_gate(
        abt,
        backtest,
        config,
        params=params,
        uri=uri,
        candidate_version=registered.model_version,
        horizon_days=settings.churn_horizon_days,
    )
    metadata = _model_metadata(result, registered, decision, plan)
    return dg.MaterializeResult(metadata={**metadata, **gate_tables, **calibration_metadata})


def _scores_metadata(scores: pl.DataFrame, model_version: str) -> dict[str, Any]:
    """The run's totals, sellers and sales at risk per band, and the newest date's top 20
    by rank with their reasons in words."""
    bands = (
        scores.group_by("risk_band")
        .agg(pl.len().alias("sellers"), pl.col("sales_at_risk").sum())
        .sort(pl.col("risk_band").replace_strict(BAND_ORDER), descending=True)
    )
    top = scores.sort("reference_date", "risk_rank", descending=[True, False]).select(
        "reference_date",
        "risk_rank",
        "seller_id",
        "churn_probability",
        "risk_band",
        "sales_at_risk",
        "reasons",
    )
    return {
        "model_version": model_version,
        "mean_probability": float(scores.get_column("churn_probability").mean() or 0.0),
        "sales_at_risk": float(scores.get_column("sales_at_risk").sum()),
        "sellers_per_band": table_value(bands),
        "top_20": table_value(top, max_rows=20),
    }


@dg.asset(
    key=SCORES_KEY,
    group_name=SCORING_GROUP,
    code_version=SCORES_VERSION,
    description="Daily churn risk per active seller: probability, rank, band, sales at "
    "risk, the top three reasons for medium and high risk, and the champion model version.",
    partitions_def=reference_date_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[*FEATURE_KEYS, MODEL_KEY],
    metadata=PARTITION_METADATA,
    kinds={"duckdb", "xgboost"},
    pool=WAREHOUSE_POOL,
)
def churn_scores(
    context: dg.AssetExecutionContext,
    warehouse: DuckDBResource,
    mlflow: MlflowTracking,
    settings: ChurnSettings,
) -> pl.DataFrame:
    dates = partition_dates(context)
    model = load_champion(mlflow.ready_uri())
    with warehouse.get_connection() as conn:
        features = model_frame(
            read_feature_tables(conn, dates),
            horizon_days=settings.churn_horizon_days,
            window_days=settings.feature_window_days,
        )
    scores = score_sellers(
        model.booster,
        model.feature_names,
        features,
        model_version=model.version,
        model_alias=CHAMPION_ALIAS,
        scored_at=datetime.now(UTC).replace(tzinfo=None),
        calibrator=model.calibrator,
    )
    exports = export_per_date(
        account_manager_view(scores), settings.to_settings().exports_dir / "churn_scores"
    )
    metadata = _scores_metadata(scores, model.version)
    context.add_output_metadata(
        {**metadata, "exports": dg.MetadataValue.json([str(p) for p in exports[:10]])}
    )
    return scores
