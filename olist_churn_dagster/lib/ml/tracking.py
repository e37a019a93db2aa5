"""MLflow tracking and registry for the churn model, with a champion gate.

Every function takes the tracking URI explicitly: MLflow 3 otherwise writes a `mlflow.db`
(and `mlruns/` artifacts) into whatever directory the process happens to run in. The
model registry lives in the same store as the runs.

The gate: a newly registered version becomes `champion` only when its recipe backtests not
worse than the current champion's recipe *on the same cutoffs and data*, so the comparison
never mixes windows or data versions.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import polars as pl

from olist_churn_dagster.lib.exports import write_csv_for_people
from olist_churn_dagster.lib.markdown import frame_to_markdown
from olist_churn_dagster.lib.ml.calibration import Calibrator
from olist_churn_dagster.lib.ml.model import (
    LOWER_IS_BETTER,
    ModelParams,
    TrainResult,
    predict,
)

MODEL_NAME = "olist-seller-churn"
CHAMPION_ALIAS = "champion"
MODEL_ARTIFACT = "model"
CALIBRATION_ARTIFACT = "calibration.json"
_URI_LOCK = threading.RLock()
_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")

if TYPE_CHECKING:
    import xgboost as xgb
    from mlflow.tracking import MlflowClient

# MLflow and XGBoost are imported inside the functions that use them: the code location
# imports this module, and every run worker (a sensor's run too) would otherwise spend
# seconds loading them before its first step.
# (Not in a background thread: a step importing MLflow while another thread does can see
# its protobuf modules half-built, "Depends on file 'databricks.proto'".)


@dataclass(frozen=True)
class RegisteredModelInfo:
    """Where one training run landed: its run, experiment and registered version."""

    run_id: str
    experiment_id: str
    model_version: str
    model_uri: str  # models:/olist-seller-churn/<version>


@dataclass(frozen=True)
class GateDecision:
    """The champion gate's verdict and the two scores it compared."""

    promoted: bool
    candidate_version: str
    candidate_score: float
    champion_version: str | None
    champion_score: float | None
    metric: str
    reason: str


@dataclass(frozen=True)
class LoadedModel:
    """A registered model version ready to score: booster plus its feature order."""

    booster: xgb.Booster
    version: str
    feature_names: list[str]
    run_id: str | None
    calibrator: Calibrator = field(default_factory=Calibrator)


class NoChampionError(LookupError):
    """No model version carries the champion alias yet."""


# --------------------------------------------------------------------------- plumbing


@contextmanager
def mlflow_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at `tracking_uri` for the block only, then restore.

    The fluent API (start_run, log_model, load_model) reads a process-wide URI; the lock
    keeps two threads from swapping it under each other. Runs, metrics and the registry go
    through an `MlflowClient` given the URI; only model logging and loading need this.
    """
    import mlflow

    with _URI_LOCK:
        env_before = {k: os.environ.get(k) for k in _URI_ENV}
        tracking_before, registry_before = _set_uris()
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        try:
            yield
        finally:
            # None unsets: MLflow's setters take it back to "not set", where its getters
            # would return their default (`sqlite:///mlflow.db` in the working directory).
            mlflow.set_tracking_uri(tracking_before)  # type: ignore[arg-type]
            mlflow.set_registry_uri(registry_before)  # type: ignore[arg-type]
            for key, value in env_before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _set_uris() -> tuple[str | None, str | None]:
    """The tracking and registry URIs set in the process, None for one left unset. MLflow's
    setters mirror a URI into its environment variable, so an unset variable means the
    getter would only return a default."""
    import mlflow

    tracking = mlflow.get_tracking_uri() if os.environ.get(_URI_ENV[0]) else None
    registry = mlflow.get_registry_uri() if os.environ.get(_URI_ENV[1]) else None
    return tracking, registry


def _client(tracking_uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def sqlite_store_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(unquote(tracking_uri[len("sqlite:///") :])).expanduser().resolve()


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts beside a SQLite store (`<db dir>/artifacts`), never `./mlruns` in the cwd.

    Other stores (a tracking server, a file store) pick their own location: None.
    """
    store = sqlite_store_path(tracking_uri)
    return None if store is None else (store.parent / "artifacts").as_uri()


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


# --------------------------------------------------------------------------- logging


def _params(result: TrainResult, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    plan = result.plan
    return {
        **asdict(result.params),
        "best_iteration": result.best_iteration,
        "n_features": len(result.feature_names),
        **{f"n_rows_{block}": n for block, n in result.n_rows.items()},
        "train_cohorts": f"{plan.train[0]}..{plan.train[-1]} ({len(plan.train)})",
        "valid_cohorts": ",".join(d.isoformat() for d in plan.valid),
        "test_cohorts": ",".join(d.isoformat() for d in plan.test),
        **(extra or {}),
    }


def _metrics(result: TrainResult) -> dict[str, float]:
    metrics = {f"test_{k}": v for k, v in result.metrics.items()}
    metrics |= {f"valid_{k}": v for k, v in result.valid_metrics.items()}
    for name, values in result.baselines.items():
        metrics |= {f"baseline_{name}_{k}": v for k, v in values.items()}
    if "recency_rule" in result.baselines:
        recency_auc = result.baselines["recency_rule"]["roc_auc"]
        metrics["test_roc_auc_gain_over_recency"] = result.metrics["roc_auc"] - recency_auc
    metrics["fit_seconds"] = result.fit_seconds
    return {k: float(v) for k, v in metrics.items()}


def _write_artifacts(result: TrainResult, folder: Path) -> None:
    plots_dir, eval_dir = folder / "plots", folder / "evaluation"
    plots_dir.mkdir()
    eval_dir.mkdir()
    for name, figure in result.figures.items():
        figure.savefig(plots_dir / f"{name}.png", dpi=110)
    table = result.comparison_table()
    write_csv_for_people(table, eval_dir / "metrics_vs_baselines.csv")
    (eval_dir / "metrics_vs_baselines.md").write_text(
        frame_to_markdown(table, max_rows=table.height)
    )
    write_csv_for_people(result.importance, eval_dir / "feature_importance.csv")
    (eval_dir / "feature_importance.md").write_text(
        frame_to_markdown(result.importance, max_rows=result.importance.height)
    )
    (eval_dir / "split_plan.json").write_text(json.dumps(result.plan.as_dict(), indent=2))
    result.test_frame.write_parquet(eval_dir / "oot_scores.parquet")


def _pip_requirements() -> list[str]:
    # Given explicitly: MLflow would otherwise infer them by re-loading the model in a
    # subprocess, which is slow and brings nothing here.
    import mlflow
    import xgboost as xgb

    return [f"xgboost=={xgb.__version__}", f"mlflow=={mlflow.__version__}"]


def provenance_params(
    raw_fingerprint: str | None, catalogue_sha256: str, git_commit: str | None
) -> dict[str, str]:
    """What a training run needs recorded to be reproduced, as run params: the raw load's
    fingerprint (`lib.ingest.delta.loaded_fingerprint`), the feature catalogue's hash and
    the code's commit (`lib.versions`); one not known (no load yet, no git) is left out."""
    params = {
        "raw_fingerprint": raw_fingerprint,
        "feature_catalogue_sha256": catalogue_sha256,
        "code_git_commit": git_commit,
    }
    return {k: v for k, v in params.items() if v}


CANDIDATE_METRICS = ("mean_roc_auc", "std_roc_auc", "min_roc_auc", "seconds")


def _log_candidates(experiment_id: str, candidates: pl.DataFrame) -> None:
    """Each tuning candidate (a row of `backtest.tune_walk_forward`'s table, best first: the
    one trained) as a child run of the active run: its parameters, its mean, spread and
    worst cutoff ROC AUC, and its backtest figures per cutoff as metric history (step =
    cutoff index, oldest first)."""
    import mlflow

    grid = [c for c in candidates.columns if c not in (*CANDIDATE_METRICS, "per_cutoff")]
    for rank, row in enumerate(candidates.iter_rows(named=True), start=1):  # a few
        cutoffs = row["per_cutoff"]
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name=f"candidate-{rank}",
            nested=True,
            tags={"kind": "tuning_candidate", "chosen": str(rank == 1).lower()},
        ):
            mlflow.log_params(
                {k: row[k] for k in grid}
                | {"rank": rank, "cutoffs": ",".join(str(c["cutoff"]) for c in cutoffs)}
            )
            mlflow.log_metrics({k: float(row[k]) for k in CANDIDATE_METRICS})
            for step, figures in enumerate(cutoffs):
                metrics = {f"backtest_{k}": v for k, v in figures.items() if k != "cutoff"}
                mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_and_register(
    result: TrainResult,
    *,
    tracking_uri: str,
    experiment: str,
    run_name: str | None = None,
    extra_params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    artifact_location: str | None = None,
    candidates: pl.DataFrame | None = None,
) -> RegisteredModelInfo:
    """Log one training result as a run (params, OOT and baseline metrics, plots, tables,
    the model with signature and example) and register the model under MODEL_NAME.
    `extra_params` adds params (e.g. `provenance_params`); `candidates`, the tuning that
    chose the params, is logged as child runs (`_log_candidates`)."""
    import mlflow
    import mlflow.xgboost
    from mlflow.models import infer_signature

    client = _client(tracking_uri)
    location = artifact_location or default_artifact_location(tracking_uri)
    experiment_id = _experiment_id(client, experiment, location)
    example = result.input_example.to_pandas()
    signature = infer_signature(
        example, predict(result.booster, result.input_example, result.feature_names)
    )
    with mlflow_uri(tracking_uri):
        nested = mlflow.active_run() is not None
        with mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {}), nested=nested
        ) as run:
            tuning = {} if candidates is None else {"tuning_candidates": candidates.height}
            mlflow.log_params(_params(result, {**(extra_params or {}), **tuning}))
            mlflow.log_metrics(_metrics(result))
            if candidates is not None:
                _log_candidates(experiment_id, candidates)
            with tempfile.TemporaryDirectory() as tmp:
                _write_artifacts(result, Path(tmp))
                mlflow.log_artifacts(tmp)
            info = mlflow.xgboost.log_model(
                result.booster,
                name=MODEL_ARTIFACT,
                signature=signature,
                input_example=example,
                registered_model_name=MODEL_NAME,
                pip_requirements=_pip_requirements(),
                model_format="json",
            )
    version = str(info.registered_model_version)
    client.set_model_version_tag(
        MODEL_NAME, version, "test_roc_auc", str(result.metrics["roc_auc"])
    )
    client.set_model_version_tag(
        MODEL_NAME, version, "test_cohorts", ",".join(map(str, result.plan.test))
    )
    return RegisteredModelInfo(
        run_id=run.info.run_id,
        experiment_id=experiment_id,
        model_version=version,
        model_uri=f"models:/{MODEL_NAME}/{version}",
    )


def log_backtest(
    table: pl.DataFrame,
    summary: Mapping[str, float],
    figures: Mapping[str, Any],
    *,
    tracking_uri: str,
    experiment: str,
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    artifact_location: str | None = None,
) -> str:
    """Log a walk-forward backtest as its own run: the summary as metrics, each scorer's
    per-cutoff metrics as metric history (step = cutoff index, oldest first), the
    per-cutoff table and the figures as artifacts. Returns the run id."""
    import mlflow

    client = _client(tracking_uri)
    location = artifact_location or default_artifact_location(tracking_uri)
    experiment_id = _experiment_id(client, experiment, location)
    cutoffs = sorted(table.get_column("cutoff").unique().to_list())
    step_of = {d: i for i, d in enumerate(cutoffs)}
    metric_cols = [c for c in table.columns if c not in ("cutoff", "scorer", "rows")]
    with mlflow_uri(tracking_uri):
        nested = mlflow.active_run() is not None
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name=run_name,
            tags={"kind": "backtest", **dict(tags or {})},
            nested=nested,
        ) as run:
            mlflow.log_params(
                {
                    "cutoffs": ",".join(map(str, cutoffs)),
                    "n_cutoffs": len(cutoffs),
                    **(params or {}),
                }
            )
            mlflow.log_metrics({k: float(v) for k, v in summary.items()})
            for row in table.iter_rows(named=True):  # cutoffs x scorers: a few dozen rows
                mlflow.log_metrics(
                    {f"backtest_{row['scorer']}_{m}": float(row[m]) for m in metric_cols},
                    step=step_of[row["cutoff"]],
                )
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                write_csv_for_people(table, folder / "backtest_per_cutoff.csv")
                (folder / "backtest_per_cutoff.md").write_text(
                    frame_to_markdown(table, max_rows=table.height)
                )
                for name, figure in figures.items():
                    figure.savefig(folder / f"{name}.png", dpi=110)
                mlflow.log_artifacts(tmp, artifact_path="backtest")
    return run.info.run_id


# --------------------------------------------------------------------------- loading


def load_model_version(tracking_uri: str, version: str) -> LoadedModel:
    """Load one registered version of the churn model as an XGBoost booster."""
    import mlflow.xgboost

    client = _client(tracking_uri)
    model_version = client.get_model_version(MODEL_NAME, str(version))
    with mlflow_uri(tracking_uri):
        booster = mlflow.xgboost.load_model(f"models:/{MODEL_NAME}/{model_version.version}")
    if not booster.feature_names:
        raise ValueError(f"model version {version} was saved without feature names")
    return LoadedModel(
        booster=booster,
        version=str(model_version.version),
        feature_names=list(booster.feature_names),
        run_id=model_version.run_id,
        calibrator=load_calibrator(tracking_uri, model_version.run_id),
    )


def log_calibration(tracking_uri: str, run_id: str, version: str, calibrator: Calibrator) -> None:
    """Store the calibration map beside the model (run artifact) and name it on the
    version, so scoring applies exactly the map chosen at training time."""
    client = _client(tracking_uri)
    client.log_dict(run_id, calibrator.as_dict(), CALIBRATION_ARTIFACT)
    client.set_model_version_tag(MODEL_NAME, version, "calibration", calibrator.method)


def load_calibrator(tracking_uri: str, run_id: str | None) -> Calibrator:
    """The run's calibration map; the identity for a run logged without one (older
    versions keep scoring as they did)."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return Calibrator()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = _client(tracking_uri).download_artifacts(run_id, CALIBRATION_ARTIFACT, tmp)
            data = json.loads(Path(path).read_text())
    except (MlflowException, OSError):
        return Calibrator()
    return Calibrator.from_dict(data)


def champion_version(tracking_uri: str) -> str | None:
    """The version carrying the champion alias, or None when there is none yet."""
    from mlflow.exceptions import MlflowException

    try:
        return str(
            _client(tracking_uri).get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS).version
        )
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def load_champion(tracking_uri: str) -> LoadedModel:
    """Load models:/olist-seller-churn@champion; NoChampionError when none is promoted."""
    version = champion_version(tracking_uri)
    if version is None:
        raise NoChampionError(
            f"no version of {MODEL_NAME!r} carries the {CHAMPION_ALIAS!r} alias yet; "
            "train a model and pass the champion gate first"
        )
    return load_model_version(tracking_uri, version)


# --------------------------------------------------------------------------- gate


def _not_worse(candidate: float, champion: float, metric: str, tolerance: float) -> bool:
    if metric in LOWER_IS_BETTER:
        return candidate <= champion + tolerance
    return candidate >= champion - tolerance


def _record(client: MlflowClient, decision: GateDecision, run_id: str | None, window: str) -> None:
    tags = {
        "gate.promoted": str(decision.promoted).lower(),
        "gate.metric": decision.metric,
        "gate.candidate_score": repr(decision.candidate_score),
        "gate.champion_version": decision.champion_version or "",
        "gate.champion_score": ""
        if decision.champion_score is None
        else repr(decision.champion_score),
        "gate.oot_window": window,
        "gate.reason": decision.reason,
    }
    for key, value in tags.items():
        client.set_model_version_tag(MODEL_NAME, decision.candidate_version, key, value)
        if run_id:
            client.set_tag(run_id, key, value)


def run_model_params(tracking_uri: str, run_id: str | None) -> ModelParams | None:
    """The ModelParams a training run logged (None when the run or a field is missing)."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        logged = _client(tracking_uri).get_run(run_id).data.params
    except MlflowException:
        return None
    defaults = ModelParams()
    values: dict[str, Any] = {}
    for f in fields(ModelParams):
        if f.name not in logged:
            return None
        values[f.name] = type(getattr(defaults, f.name))(float(logged[f.name]))
    return ModelParams(**values)


def backtest_champion_gate(
    *,
    tracking_uri: str,
    candidate_version: str,
    candidate_params: ModelParams,
    candidate_table: pl.DataFrame,
    rerun: Callable[[ModelParams, Sequence[str]], pl.DataFrame],
    abt_columns: Sequence[str],
    metric: str = "roc_auc",
    tolerance: float = 0.0,
) -> tuple[GateDecision, pl.DataFrame | None]:
    """Promote the candidate unless the champion's recipe backtests better on the same
    cutoffs by more than `tolerance` (mean of `metric` over the cutoffs).

    `candidate_table` holds the candidate's per-cutoff metrics (`cutoff`, `metric`);
    `rerun(params, features)` backtests another recipe on the same cutoffs and data. The
    champion's recipe (its logged params and its feature list) is rerun, not its fitted
    booster: that booster was trained on the very cohorts being tested. When both recipes
    are the same the candidate's table stands for both. Returns the decision (recorded as
    tags, alias moved when promoted) and the champion's per-cutoff table.
    """
    if candidate_table.height == 0:
        raise ValueError("backtest_champion_gate needs the candidate's per-cutoff metrics")
    candidate = load_model_version(tracking_uri, candidate_version)
    score = float(candidate_table.get_column(metric).mean())
    cutoffs = sorted(candidate_table.get_column("cutoff").to_list())
    window = f"backtest {cutoffs[0]}..{cutoffs[-1]} ({len(cutoffs)} cutoffs)"
    common = {"candidate_version": candidate.version, "candidate_score": score, "metric": metric}
    current = champion_version(tracking_uri)
    champion_table: pl.DataFrame | None = None
    if current is None or current == candidate.version:
        reason = (
            "no champion yet: the first model is promoted"
            if current is None
            else "candidate already is the champion"
        )
        decision = GateDecision(
            promoted=True, champion_version=current, champion_score=None, reason=reason, **common
        )
    else:
        champion = load_model_version(tracking_uri, current)
        params = run_model_params(tracking_uri, champion.run_id)
        missing = sorted(set(champion.feature_names) - set(abt_columns))
        if params is None or missing:
            why = "its parameters were not logged" if params is None else "the feature set changed"
            decision = GateDecision(
                promoted=True,
                champion_version=current,
                champion_score=None,
                reason=f"champion v{current} cannot be backtested ({why}): candidate promoted",
                **common,
            )
        else:
            same = params == candidate_params and champion.feature_names == candidate.feature_names
            champion_table = candidate_table if same else rerun(params, champion.feature_names)
            champion_score = float(champion_table.get_column(metric).mean())
            promoted = _not_worse(score, champion_score, metric, tolerance)
            verdict = "not worse than" if promoted else "worse than"
            decision = GateDecision(
                promoted=promoted,
                champion_version=current,
                champion_score=champion_score,
                reason=f"candidate mean backtest {metric}={score:.4f} is {verdict} champion "
                f"v{current} {champion_score:.4f} (tolerance {tolerance}) over {window}"
                + (" (same recipe)" if same else ""),
                **common,
            )
    client = _client(tracking_uri)
    if decision.promoted:
        client.set_registered_model_alias(MODEL_NAME, CHAMPION_ALIAS, candidate.version)
    _record(client, decision, candidate.run_id, window)
    return decision, champion_table
