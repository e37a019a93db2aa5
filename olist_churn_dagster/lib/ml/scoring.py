"""Turning a model and a day's features into the account managers' ranked risk list."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from olist_churn_dagster.lib.features import FEATURE_CATALOGUE
from olist_churn_dagster.lib.ml.calibration import Calibrator
from olist_churn_dagster.lib.ml.model import predict, top_reasons
from olist_churn_dagster.lib.tables import KEYS

if TYPE_CHECKING:
    import xgboost as xgb

REVENUE_FEATURE = "sales_revenue"  # trailing-window revenue: the base of sales at risk
N_REASONS = 3
# Risk bands on the churn probability, highest first (documented in the README).
RISK_BANDS: tuple[tuple[float, str], ...] = ((0.5, "high"), (0.25, "medium"), (0.0, "low"))
# Reasons are explained where there is risk to act on: medium and high bands. TreeSHAP is
# the costliest step of scoring (its cost per row grows with the model's trees, see
# `treeshap`), and for a low-risk seller its "what raises the risk most" has nothing to act on.
REASONS_FROM_PROBABILITY = RISK_BANDS[1][0]
READABLE: Mapping[str, str] = {spec.name: spec.meaning for spec in FEATURE_CATALOGUE}
# Predictions run on every core: they are independent per row, so the result
# is the same to the bit with any number of threads, while a model trains on one thread
# (see `ModelParams.nthread`), which the loaded booster would otherwise keep.
SCORING_THREADS = os.cpu_count() or 1


def _risk_band(probability: pl.Expr) -> pl.Expr:
    expr = pl.lit(RISK_BANDS[-1][1])
    for threshold, band in reversed(RISK_BANDS[:-1]):
        expr = pl.when(probability >= threshold).then(pl.lit(band)).otherwise(expr)
    return expr


def _readable(column: str) -> pl.Expr:
    return (
        pl.col(column)
        .replace_strict(READABLE, default=pl.col(column), return_dtype=pl.String)
        .alias(f"{column}_meaning")
    )


def score_sellers(
    booster: xgb.Booster,
    feature_names: list[str],
    features: pl.DataFrame,
    *,
    model_version: str,
    model_alias: str,
    scored_at: datetime,
    calibrator: Calibrator | None = None,
) -> pl.DataFrame:
    """One row per seller and date: probability, dense rank within the date (1 = riskiest),
    risk band, sales at risk (trailing-window revenue x probability), the model used and,
    for medium and high risk, the three features pushing the risk up most (name, meaning,
    the seller's value, contribution); the reasons of low-risk rows are null. The
    probability is the model's, mapped by `calibrator` when given (the one chosen by the
    backtest); reasons stay on the model's own log-odds."""
    missing = [n for n in feature_names if n not in features.columns]
    if missing:
        raise ValueError(
            f"the model version {model_version} needs feature column(s) {missing[:5]} that "
            "the feature tables do not have; retrain the model on the current feature store"
        )
    booster = booster.copy()
    booster.set_param({"nthread": SCORING_THREADS})
    raw = predict(booster, features, feature_names)
    calibrated = raw if calibrator is None else calibrator.apply(raw)
    probability = pl.Series("churn_probability", calibrated, dtype=pl.Float64)
    at_risk = features.filter(probability.cast(pl.Float64) >= REASONS_FROM_PROBABILITY)
    reasons = top_reasons(booster, at_risk, feature_names, k=N_REASONS)
    reason_columns = [_readable(f"reason_{i}") for i in range(1, N_REASONS + 1)]
    return (
        features.select(*KEYS, REVENUE_FEATURE)
        .with_columns(probability.cast(pl.Float64))
        .join(reasons, on=KEYS, how="left")
        .with_columns(
            pl.col("churn_probability")
            .rank(method="dense", descending=True)
            .over("reference_date")
            .cast(pl.Int64)
            .alias("risk_rank"),
            _risk_band(pl.col("churn_probability")).alias("risk_band"),
            (pl.col(REVENUE_FEATURE).fill_null(0.0) * pl.col("churn_probability")).alias(
                "sales_at_risk"
            ),
            *reason_columns,
            pl.lit(model_version).alias("model_version"),
            pl.lit(model_alias).alias("model_alias"),
            pl.lit(scored_at).cast(pl.Datetime("us")).alias("scored_at"),
        )
        .rename({REVENUE_FEATURE: "trailing_revenue"})
        .select(
            *KEYS,
            "churn_probability",
            "risk_rank",
            "risk_band",
            "trailing_revenue",
            "sales_at_risk",
            *[
                c
                for i in range(1, N_REASONS + 1)
                for c in (
                    f"reason_{i}",
                    f"reason_{i}_meaning",
                    f"reason_{i}_value",
                    f"reason_{i}_contribution",
                )
            ],
            "model_version",
            "model_alias",
            "scored_at",
        )
        .sort("reference_date", "risk_rank", "seller_id")
    )


def export_scores(scores: pl.DataFrame, folder: Path) -> list[Path]:
    """One CSV per reference date in `folder` (`<date>.csv`, replaced atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for (day,), frame in scores.partition_by("reference_date", as_dict=True).items():
        path = folder / f"{day.isoformat()}.csv"
        tmp = path.with_suffix(".csv.tmp")
        frame.write_csv(tmp)
        tmp.replace(path)
        paths.append(path)
    return sorted(paths)
