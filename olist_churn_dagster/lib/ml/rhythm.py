"""Features of a seller's recent dynamics against its own rhythm, derived from the feature
store's columns (so they are point-in-time exactly when those are).

Why: the label asks whether the next sale comes before the 45-day silence mark. A seller
who sells daily and has been silent 10 days is in trouble; one who sells monthly is not.
Trees find such ratios only with many splits; stating them directly (silence over the
usual gap, the chance of no sale in the days left under the seller's own rate) gives the
model the question's own arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from olist_churn_dagster.lib.features import FeatureSpec
from olist_churn_dagster.lib.ml.abt import join_features

_SEEN = "the window's days since the first sale"
_TIME_LEFT = "before the silence reaches the churn horizon (45 days by default)"
# Their catalogue entries (family `rhythm`), as the feature families give theirs.
RHYTHM_CATALOGUE: tuple[FeatureSpec, ...] = tuple(
    FeatureSpec("rhythm", name, meaning, window, unit)
    for name, meaning, window, unit in (
        (
            "rhythm_recency_over_gap",
            "days since the last sale day over the mean gap between sale days "
            "(null with fewer than 2 sale days)",
            "window",
            "ratio",
        ),
        (
            "rhythm_recency_z",
            "days since the last sale day minus the mean gap between sale days, in standard "
            "deviations of the gaps (null below 2 gaps or when all gaps are equal)",
            "window",
            "standard deviations",
        ),
        ("rhythm_active_day_rate", f"share of {_SEEN} with a sale", "window", "share"),
        (
            "rhythm_p_no_sale_left",
            f"chance of no sale {_TIME_LEFT} at the seller's rate of sale days over {_SEEN} "
            "(Poisson)",
            "window",
            "probability",
        ),
        (
            "rhythm_p_no_sale_left_30d",
            f"chance of no sale {_TIME_LEFT} at the rate of orders of the last 30 days (Poisson)",
            "30d",
            "probability",
        ),
        (
            "rhythm_orders_30d_vs_window",
            f"orders of the last 30 days over the 30-day average of {_SEEN} (null without orders)",
            "window",
            "ratio",
        ),
    )
)
RHYTHM_FEATURES = tuple(spec.name for spec in RHYTHM_CATALOGUE)
_NEEDED = (
    "sales_recency_days",
    "sales_mean_gap_days",
    "sales_std_gap_days",
    "sales_active_days",
    "sales_tenure_days",
    "sales_orders",
    "sales_orders_30d",
)


def add_rhythm_features(
    frame: pl.DataFrame, *, horizon_days: int = 45, window_days: int = 180
) -> pl.DataFrame:
    """`frame` plus RHYTHM_FEATURES (nulls where a ratio has no base), vectorised.

    - recency over the mean gap between sale days, and its z-score against the gaps;
    - active-day rate: sale days per day of the window the seller has been on;
    - p_no_sale_left: exp(-rate x days left before the silence mark), the Poisson chance
      that no sale comes in time, with the window's rate and with the last 30 days' rate;
    - orders of the last 30 days against the window's 30-day average.
    """
    missing = [c for c in _NEEDED if c not in frame.columns]
    if missing:
        raise ValueError(f"add_rhythm_features: frame lacks column(s) {missing}")
    recency = pl.col("sales_recency_days").cast(pl.Float64)
    span = pl.min_horizontal(pl.col("sales_tenure_days").cast(pl.Float64) + 1.0, window_days)
    rate = pl.col("sales_active_days").cast(pl.Float64) / span
    left = (horizon_days - recency).clip(lower_bound=0.0)
    std = pl.col("sales_std_gap_days")
    mean_gap = pl.col("sales_mean_gap_days")
    per_30 = pl.col("sales_orders").cast(pl.Float64) * 30.0 / span
    return frame.with_columns(
        pl.when(mean_gap > 0).then(recency / mean_gap).alias("rhythm_recency_over_gap"),
        pl.when(std > 0).then((recency - mean_gap) / std).alias("rhythm_recency_z"),
        rate.alias("rhythm_active_day_rate"),
        (-rate * left).exp().alias("rhythm_p_no_sale_left"),
        (-pl.col("sales_orders_30d").cast(pl.Float64) / 30.0 * left)
        .exp()
        .alias("rhythm_p_no_sale_left_30d"),
        pl.when(per_30 > 0)
        .then(pl.col("sales_orders_30d") / per_30)
        .alias("rhythm_orders_30d_vs_window"),
    )


def model_frame(
    feature_tables: Mapping[str, pl.DataFrame], *, horizon_days: int = 45, window_days: int = 180
) -> pl.DataFrame:
    """The feature tables joined plus the rhythm features: what the model reads, the same
    at training (the ABT) and at scoring, so the two can never disagree."""
    return add_rhythm_features(
        join_features(feature_tables), horizon_days=horizon_days, window_days=window_days
    )
