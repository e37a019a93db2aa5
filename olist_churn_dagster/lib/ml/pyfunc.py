"""The registered churn model as an MLflow pyfunc: the champion scores a seller anywhere
MLflow runs (`mlflow models serve`, a notebook, a CRM's batch job) exactly as the score
table does.

Why a pyfunc and not the bare booster: the probability a person reads is the booster's
score through the calibrator chosen at training, and the reasons are TreeSHAP
contributions written as the catalogue's sentences. The model version carries all of it:

- artifacts: `booster.json` (XGBoost's JSON model), `calibration.json` (the calibration
  map, `Calibrator.as_dict`) and `features.json` (the model's feature order, and the
  columns a row may add for the reasons' sentences and sales at risk);
- code: this package's pure core (`olist_churn_dagster/lib`, no Dagster), as the model's
  `code_paths`, so the reason logic is the code that wrote the score table's reasons;
- a signature (the features as doubles; `seller_id` and `reference_date` optional, passed
  through) and an input example.

`predict` scores through `scoring.model_scores`, `per_seller_columns` and `explain`, the
functions `ml/churn_scores` uses, and `tracking.load_model_version` reads its scores'
booster and calibrator back from these same artifacts: one way to score.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import polars as pl

from olist_churn_dagster.lib.ml.calibration import Calibrator
from olist_churn_dagster.lib.ml.scoring import (
    NAMED,
    REASON_COLUMNS,
    REVENUE_FEATURE,
    explain,
    model_scores,
    per_seller_columns,
    scoring_booster,
)
from olist_churn_dagster.lib.tables import KEYS

if TYPE_CHECKING:
    import pandas as pd
    import xgboost as xgb
    from mlflow.models import ModelSignature

BOOSTER, CALIBRATION, FEATURES = "booster", "calibration", "features"
ARTIFACT_FILES: Mapping[str, str] = {
    BOOSTER: "booster.json",
    CALIBRATION: "calibration.json",
    FEATURES: "features.json",
}
# What a served row returns, after the keys it was sent with.
OUTPUT_COLUMNS = (
    "model_score",
    "churn_probability",
    "risk_band",
    "sales_at_risk",
    *REASON_COLUMNS,
    "reasons",
)
_PACKAGE = Path(__file__).resolve().parents[2]  # olist_churn_dagster/


def optional_columns(feature_names: Sequence[str]) -> list[str]:
    """Columns a row may add to the model's features: the ones the reason sentences name
    and the trailing revenue (for sales at risk), when they are not features themselves.
    (The model trained on the feature store reads them all as features.)"""
    named = set().union(*NAMED.values()) | {REVENUE_FEATURE}
    return sorted(named - set(feature_names))


def write_artifacts(
    booster: xgb.Booster, feature_names: Sequence[str], calibrator: Calibrator, folder: Path
) -> dict[str, str]:
    """The three artifact files in `folder`; their paths by artifact name."""
    paths = {name: folder / file for name, file in ARTIFACT_FILES.items()}
    booster.save_model(paths[BOOSTER])
    paths[CALIBRATION].write_text(json.dumps(calibrator.as_dict()))
    paths[FEATURES].write_text(
        json.dumps({"features": list(feature_names), "optional": optional_columns(feature_names)})
    )
    return {name: str(path) for name, path in paths.items()}


def load_parts(paths: Mapping[str, str]) -> tuple[xgb.Booster, list[str], Calibrator]:
    """Booster, feature order and calibrator from the artifact files `write_artifacts` wrote."""
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(paths[BOOSTER])
    features = json.loads(Path(paths[FEATURES]).read_text())["features"]
    calibrator = Calibrator.from_dict(json.loads(Path(paths[CALIBRATION]).read_text()))
    return booster, features, calibrator


def code_package(folder: Path) -> str:
    """The package's pure core copied into `folder` as `olist_churn_dagster/` (its
    `__init__` and `lib/`, without caches): the model's code_paths, so that loading the
    model imports the code that logged it, not whatever version is installed."""
    target = folder / _PACKAGE.name
    target.mkdir()
    shutil.copy2(_PACKAGE / "__init__.py", target / "__init__.py")
    shutil.copytree(_PACKAGE / "lib", target / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    return str(target)


def served_scores(
    booster: xgb.Booster,
    feature_names: list[str],
    calibrator: Calibrator,
    rows: pl.DataFrame,
) -> pl.DataFrame:
    """Per row, in order: the keys it came with, then OUTPUT_COLUMNS (sales at risk null
    when the row has no trailing revenue). Every row is explained: the score table explains
    its medium and high risk and each date's largest sales at risk, in the same words."""
    missing = [c for c in feature_names if c not in rows.columns]
    if missing:
        raise ValueError(
            f"the feature row lacks column(s) {missing}: the model reads these "
            f"{len(feature_names)} features {list(feature_names)}"
        )
    keys = [c for c in KEYS if c in rows.columns]
    revenue = pl.col(REVENUE_FEATURE) if REVENUE_FEATURE in rows.columns else pl.lit(None)
    scored = pl.concat(
        [
            rows.with_columns(revenue.cast(pl.Float64).alias(REVENUE_FEATURE)).select(
                *keys, REVENUE_FEATURE
            ),
            model_scores(booster, feature_names, rows, calibrator),
            explain(booster, feature_names, rows.drop(keys)),
        ],
        how="horizontal",
    ).with_columns(per_seller_columns())
    if REVENUE_FEATURE not in rows.columns:
        scored = scored.with_columns(pl.lit(None, dtype=pl.Float64).alias("sales_at_risk"))
    return scored.select(*keys, *OUTPUT_COLUMNS)


class ChurnModel(mlflow.pyfunc.PythonModel):
    """The champion as MLflow loads it: `load_context` reads the artifacts, `predict`
    scores a pandas frame of feature rows (`served_scores`)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        booster, self.feature_names, self.calibrator = load_parts(context.artifacts)
        self.booster = scoring_booster(booster)

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        rows = pl.from_pandas(model_input)
        return served_scores(self.booster, self.feature_names, self.calibrator, rows).to_pandas()


def signature(
    feature_names: Sequence[str], example_input: pd.DataFrame, example_output: pd.DataFrame
) -> ModelSignature:
    """The keys (strings) and `optional_columns` optional, the features required, every
    number a double (a null is missing, as XGBoost reads it); the outputs as the model's
    output for `example_input` has them."""
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, Schema

    inputs = [ColSpec("string", key, required=False) for key in KEYS]
    inputs += [ColSpec("double", name) for name in feature_names]
    inputs += [ColSpec("double", name, required=False) for name in optional_columns(feature_names)]
    outputs = infer_signature(example_input, example_output).outputs
    return ModelSignature(inputs=Schema(inputs), outputs=outputs)
