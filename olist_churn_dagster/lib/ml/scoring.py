"""Turning a model and a day's features into the account managers' ranked risk list."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from olist_churn_dagster.lib.exports import write_csv_for_people
from olist_churn_dagster.lib.features import FEATURE_CATALOGUE, FeatureSpec
from olist_churn_dagster.lib.ml.calibration import Calibrator
from olist_churn_dagster.lib.ml.model import predict, top_reasons
from olist_churn_dagster.lib.tables import KEYS

if TYPE_CHECKING:
    import xgboost as xgb

REVENUE_FEATURE = "sales_revenue"  # trailing-window revenue: the base of sales at risk
N_REASONS = 3
# Risk bands on the churn probability, highest first (documented in the README).
RISK_BANDS: tuple[tuple[float, str], ...] = ((0.5, "high"), (0.25, "medium"), (0.0, "low"))
# Bands from lowest to highest risk (0 = low): a move to a larger number is a move up.
BAND_ORDER: Mapping[str, int] = {band: i for i, (_, band) in enumerate(reversed(RISK_BANDS))}
# Reasons are explained where there is risk to act on: medium and high bands. TreeSHAP is
# the costliest step of scoring (its cost per row grows with the model's trees, see
# `treeshap`), and for a low-risk seller its "what raises the risk most" has nothing to act on.
REASONS_FROM_PROBABILITY = RISK_BANDS[1][0]
# ... and for the sellers with the most sales at risk on each date, whatever their band:
# the risk digest lists them, with their reasons, for the account managers.
REASONS_FOR_TOP_SALES_AT_RISK = 10
READABLE: Mapping[str, str] = {spec.name: spec.meaning for spec in FEATURE_CATALOGUE}
UNITS: Mapping[str, str] = {spec.name: spec.unit for spec in FEATURE_CATALOGUE}
# Units written after the number; counted units (days, orders, ...) are in the meaning.
SUFFIXED_UNITS = ("cm3", "g")
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


def _label(spec: FeatureSpec) -> str:
    """The meaning as a reason reads it: without the note on when it is null (a reason has
    a value or says "none") nor what follows a ";" (how to read the value), with its short
    window when the meaning does not name it."""
    label = re.sub(r" \(null [^)]*\)", "", spec.meaning).split("; ")[0]
    days = re.fullmatch(r"(\d+)d", spec.window)
    if days and f"{days[1]} days" not in label:
        label += f" in the last {days[1]} days"
    return label


LABELS: Mapping[str, str] = {spec.name: _label(spec) for spec in FEATURE_CATALOGUE}


def decimal_text(value: pl.Expr, places: int, *, trim: bool = True) -> pl.Expr:
    """`value` with `places` decimals as text (polars casts floats to their shortest form,
    "31.0", "1e-05"); `trim` drops trailing zeros, so integers show none. Null for null,
    NaN or infinite values."""
    scale = 10**places
    scaled = (value * scale).round(0).cast(pl.Int64, strict=False)
    magnitude = scaled.abs()
    text = pl.concat_str(
        pl.when(scaled < 0).then(pl.lit("-")).otherwise(pl.lit("")),
        (magnitude // scale).cast(pl.String),
        pl.lit("."),
        (magnitude % scale).cast(pl.String).str.zfill(places),
    )
    return text.str.replace(r"\.?0+$", "") if trim else text


def money_text(value: pl.Expr) -> pl.Expr:
    """An amount in BRL as text, e.g. "R$ 1234.50"."""
    return pl.concat_str(pl.lit("R$ "), decimal_text(value, 2, trim=False))


def _reason_phrase(i: int) -> pl.Expr:
    """Reason i as "meaning: value", the value in the feature's unit (shares as %)."""
    name, value = pl.col(f"reason_{i}"), pl.col(f"reason_{i}_value")
    unit = name.replace_strict(UNITS, default=None, return_dtype=pl.String)
    shown = (
        pl.when(unit == "share")
        .then(pl.concat_str(decimal_text(value * 100, 1), pl.lit("%")))
        .when(unit == "BRL")
        .then(money_text(value))
        .when(unit.is_in(SUFFIXED_UNITS))
        .then(pl.concat_str(decimal_text(value, 2), pl.lit(" "), unit))
        .otherwise(decimal_text(value, 2))
        .fill_null(pl.lit("none"))
    )
    label = name.replace_strict(LABELS, default=name, return_dtype=pl.String)
    return pl.when(name.is_not_null()).then(pl.concat_str(label, pl.lit(": "), shown))


def reasons_in_words(n: int = N_REASONS) -> pl.Expr:
    """A scores row's reasons as one phrase for people, e.g. "days since the last sale
    day: 31; share of orders canceled: 12.5%": the catalogue's meaning and the seller's value
    in its unit (a feature the catalogue lacks goes by its name). Null where there are no
    reasons (low risk). Reads reason_i and reason_i_value, i = 1..n."""
    text = pl.concat_str(
        [_reason_phrase(i) for i in range(1, n + 1)], separator="; ", ignore_nulls=True
    )
    return pl.when(text != "").then(text).alias("reasons")


def _explained(features: pl.DataFrame, probability: pl.Series) -> pl.Series:
    """The rows whose reasons are computed: medium and high risk, and each date's largest
    sales at risk."""
    sales_at_risk = pl.col(REVENUE_FEATURE).fill_null(0.0) * pl.col("churn_probability")
    by_money = sales_at_risk.rank("ordinal", descending=True).over("reference_date")
    return (
        features.select("reference_date", REVENUE_FEATURE)
        .with_columns(probability)
        .select(
            (pl.col("churn_probability") >= REASONS_FROM_PROBABILITY)
            | (by_money <= REASONS_FOR_TOP_SALES_AT_RISK)
        )
        .to_series()
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
    for medium and high risk and each date's largest sales at risk, the three features
    pushing the risk up most (name, meaning, the seller's value, contribution); the other
    rows' reasons are null. The
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
    at_risk = features.filter(_explained(features, probability))
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


def export_per_date(table: pl.DataFrame, folder: Path) -> list[Path]:
    """One CSV per reference date of `table` in `folder` (`<date>.csv`, replaced atomically,
    formula-safe): the scores' and the digest's exports for the account managers."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for (day,), frame in table.partition_by("reference_date", as_dict=True).items():
        path = folder / f"{day.isoformat()}.csv"
        write_csv_for_people(frame, path)
        paths.append(path)
    return sorted(paths)
