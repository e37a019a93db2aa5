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
from olist_churn_dagster.lib.features import FeatureSpec
from olist_churn_dagster.lib.ml.calibration import Calibrator
from olist_churn_dagster.lib.ml.catalogue import (
    MISSING_REASONS,
    MODEL_CATALOGUE,
    REASON_TEMPLATES,
)
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
READABLE: Mapping[str, str] = {spec.name: spec.meaning for spec in MODEL_CATALOGUE}
UNITS: Mapping[str, str] = {spec.name: spec.unit for spec in MODEL_CATALOGUE}
# Units written after the number; counted units (days, orders, ...) are in the meaning.
SUFFIXED_UNITS = ("cm3", "g")
PERCENT_UNITS = ("share", "probability")  # shown as "12.5%"
ONE_DECIMAL_UNITS = ("days", "ratio", "standard deviations")  # "3.5 days", "10.3 times"
# The columns of the CSV per date for the account managers (`account_manager_view`).
EXPORT_COLUMNS = (
    "reference_date",
    "risk_rank",
    "seller_id",
    "churn_probability",
    "risk_band",
    "trailing_revenue",
    "sales_at_risk",
    "reasons",
    "model_version",
)
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


LABELS: Mapping[str, str] = {spec.name: _label(spec) for spec in MODEL_CATALOGUE}


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


def _percent(value: pl.Expr) -> pl.Expr:
    return pl.concat_str(decimal_text(value * 100, 1), pl.lit("%"))


def _shown(value: pl.Expr, unit: str | None) -> pl.Expr:
    """`value` as text in `unit` (a feature's catalogue unit): shares as %, probabilities
    as % but never 0% nor 100% ("under 0.1%", "over 99.9%": a model's chance is no
    certainty), money as R$, grams and cm3 after the number; null for null."""
    if unit == "probability":
        return (
            pl.when(value > 0.999)
            .then(pl.lit("over 99.9%"))
            .when(value < 0.001)
            .then(pl.lit("under 0.1%"))
            .otherwise(_percent(value))
        )
    if unit in PERCENT_UNITS:
        return _percent(value)
    if unit == "BRL":
        return money_text(value)
    if unit in SUFFIXED_UNITS:
        return pl.concat_str(decimal_text(value, 2), pl.lit(f" {unit}"))
    return decimal_text(value, 1 if unit in ONE_DECIMAL_UNITS else 2)


_PLACEHOLDER = r"\{(\w+)(?::(percent))?\}"  # {name} or {name:percent}


def _placeholders(template: str) -> set[str]:
    return {name for name, _ in re.findall(_PLACEHOLDER, template)}


# Feature -> the other features its sentence names (whose reasons it tells as well).
NAMED: Mapping[str, set[str]] = {
    f: _placeholders(t) - {"value"} for f, t in REASON_TEMPLATES.items()
}


def _sentence(feature: str) -> pl.Expr:
    """The feature's REASON_TEMPLATES sentence: `{value}` is the reason's value, `{name}`
    the row's column `name`, each in its feature's unit (or as a percentage); null when
    any of them is null."""
    pieces = re.split(_PLACEHOLDER, REASON_TEMPLATES[feature])  # text, name, spec, text, ...

    def shown(name: str, spec: str | None) -> pl.Expr:
        column = pl.col(name).cast(pl.Float64)
        return (
            _percent(column)
            if spec
            else _shown(column, UNITS[feature if name == "value" else name])
        )

    parts = [pl.lit(pieces[0])]
    for name, spec, text in zip(pieces[1::3], pieces[2::3], pieces[3::3], strict=True):
        parts += [shown(name, spec), pl.lit(text)]
    return pl.concat_str(parts)


def _phrase(feature: str, in_a_sentence: bool) -> pl.Expr:
    """How a reason of `feature` reads, over rows with its value in `value` (and the
    columns its sentence names, when `in_a_sentence`): the catalogue's sentence, or its
    words for a missing value, else "meaning: value" in its unit."""
    value = pl.col("value")
    label = pl.lit(f"{LABELS.get(feature, feature)}: ")
    plain = pl.concat_str(label, _shown(value, UNITS.get(feature)).fill_null(pl.lit("none")))
    phrases = [_sentence(feature)] if in_a_sentence else []
    if feature in MISSING_REASONS:
        phrases.append(pl.when(value.is_null()).then(pl.lit(MISSING_REASONS[feature])))
    return pl.coalesce(*phrases, plain)


def _long_reasons(rows: pl.DataFrame, n: int, context: list[str]) -> pl.DataFrame:
    """One row per row of `rows` (`row`, its index) and reason: slot, feature, value and
    the `context` columns."""
    return pl.concat(
        rows.select(
            pl.int_range(pl.len()).alias("row"),
            pl.lit(i, dtype=pl.Int64).alias("slot"),
            pl.col(f"reason_{i}").alias("feature"),
            pl.col(f"reason_{i}_value").cast(pl.Float64).alias("value"),
            *context,
        )
        for i in range(1, n + 1)
    ).filter(pl.col("feature").is_not_null())


def reasons_in_words(rows: pl.DataFrame, n: int = N_REASONS) -> pl.Series:
    """Each row's reasons as one text for people, e.g. "no sale for 31 days, about 10.3
    times this seller's usual gap of 3 days; share of orders canceled: 12.5%": the
    catalogue's sentence for the feature where it has one and the row holds the columns it
    names, else its meaning and the seller's value in its unit (a feature the catalogue
    lacks goes by its name); a reason another one's sentence tells, or the same words
    twice, once. Null where there are no reasons (low risk). Reads reason_i and
    reason_i_value, i = 1..n, and the columns the sentences name.

    The reasons are written feature by feature (one long row per row and reason), so each
    costs its own sentence only, not a branch for every sentence of the catalogue."""
    tellers = {f: sorted(names) for f, names in NAMED.items() if names <= set(rows.columns)}
    long = _long_reasons(rows, n, sorted(set().union(*tellers.values())))
    # A reason whose figure the filled sentence of another of the row's reasons names.
    told = (
        long.filter(pl.col("feature").is_in(list(tellers)) & pl.col("value").is_not_null())
        .select("row", pl.col("feature").replace_strict(tellers, return_dtype=pl.List(pl.String)))
        .explode("feature")
    )
    kept = long.join(told, on=["row", "feature"], how="anti")
    words = [
        part.select("row", "slot", _phrase(feature, feature in tellers).alias("phrase"))
        for (feature,), part in kept.partition_by("feature", as_dict=True).items()
    ]
    schema = {"row": pl.Int64, "slot": pl.Int64, "phrase": pl.String}
    text = (
        pl.concat([pl.DataFrame(schema=schema), *words])
        .sort("row", "slot")
        .unique(["row", "phrase"], keep="first", maintain_order=True)
        .group_by("row", maintain_order=True)
        .agg(pl.col("phrase").str.join("; ").alias("reasons"))
    )
    every = rows.select(pl.int_range(pl.len()).alias("row"))
    return every.join(text, on="row", how="left", maintain_order="left").get_column("reasons")


def _with_reasons_in_words(reasons: pl.DataFrame, rows: pl.DataFrame) -> pl.DataFrame:
    """`reasons` (top_reasons of `rows`, in their order) plus the `reasons` text, its
    sentences filled from the rows' own features."""
    named = (set().union(*NAMED.values()) & set(rows.columns)) - set(reasons.columns)
    both = pl.concat([reasons, rows.select(sorted(named))], how="horizontal")
    return reasons.with_columns(reasons_in_words(both))


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
    """One row per seller and date: the model's score and its dense rank within the date
    (1 = riskiest; sellers tie only where their scores are equal), the churn probability
    (the score mapped by `calibrator`, the one chosen by the backtest; the identity when
    none is given, within [PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR] either way), risk
    band, sales at risk (trailing-window revenue x probability), the model used and, for
    medium and high risk and each date's largest sales at risk, the three features pushing
    the risk up most (name, meaning, the seller's value, contribution) and those reasons in
    words; the other rows' reasons are null. Reasons stay on the model's own log-odds."""
    missing = [n for n in feature_names if n not in features.columns]
    if missing:
        raise ValueError(
            f"the model version {model_version} needs feature column(s) {missing[:5]} that "
            "the feature tables do not have; retrain the model on the current feature store"
        )
    booster = booster.copy()
    booster.set_param({"nthread": SCORING_THREADS})
    raw = predict(booster, features, feature_names)
    probability = pl.Series(
        "churn_probability", (calibrator or Calibrator()).apply(raw), dtype=pl.Float64
    )
    at_risk = features.filter(_explained(features, probability))
    reasons = _with_reasons_in_words(
        top_reasons(booster, at_risk, feature_names, k=N_REASONS), at_risk
    )
    reason_columns = [_readable(f"reason_{i}") for i in range(1, N_REASONS + 1)]
    return (
        features.select(*KEYS, REVENUE_FEATURE)
        .with_columns(probability, pl.Series("model_score", raw, dtype=pl.Float64))
        .join(reasons, on=KEYS, how="left")
        .with_columns(
            pl.col("model_score")
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
            "risk_rank",
            "model_score",
            "churn_probability",
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
            "reasons",
            "model_version",
            "model_alias",
            "scored_at",
        )
        .sort("reference_date", "risk_rank", "seller_id")
    )


def account_manager_view(scores: pl.DataFrame) -> pl.DataFrame:
    """The score table as the account managers' CSV shows it (EXPORT_COLUMNS): rank,
    probability (3 decimals: never 0 nor 1, see PROBABILITY_FLOOR), band, sales at risk
    and the reasons in words, riskiest first."""
    return scores.select(EXPORT_COLUMNS).with_columns(
        pl.col("churn_probability").round(3),
        pl.col("trailing_revenue", "sales_at_risk").round(2),
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
