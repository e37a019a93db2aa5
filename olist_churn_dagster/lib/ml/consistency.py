"""Point-in-time audit: stored feature rows against a recomputation from an as-of cut.

The feature store computes every date from the newest raw tables; an as-of snapshot cut
at D holds only what existed before D. Both must give the same features for D. Used by
the ABT's asset check on a sample of rows; the same property is tested on generated data.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

import polars as pl

from olist_churn_dagster.lib.features import FEATURE_FAMILIES, compute_features
from olist_churn_dagster.lib.ingest.snapshots import cut_as_of
from olist_churn_dagster.lib.ml.abt import join_features
from olist_churn_dagster.lib.tables import KEYS


def recompute_from_snapshot(
    raw: Mapping[str, pl.DataFrame], day: date, *, window_days: int, horizon_days: int
) -> pl.DataFrame:
    """All six feature tables for `day`, computed from the as-of-`day` cut of `raw`."""
    snapshot = cut_as_of(dict(raw), day)
    return join_features(
        {
            family: compute_features(
                family, snapshot, [day], window_days=window_days, horizon_days=horizon_days
            )
            for family in FEATURE_FAMILIES
        }
    )


def feature_mismatches(
    stored: pl.DataFrame, recomputed: pl.DataFrame, *, tolerance: float = 1e-9
) -> pl.DataFrame:
    """(seller_id, feature, stored, recomputed) for every stored value that differs; a
    stored row missing from the recomputation counts as a mismatch of every feature."""
    columns = [c for c in stored.columns if c in recomputed.columns and c not in KEYS]
    joined = stored.select(*KEYS, *columns).join(
        recomputed.select(*KEYS, *columns), on=KEYS, how="left", suffix="__re"
    )
    diffs = [
        joined.filter(_differs(pl.col(c), pl.col(f"{c}__re"), tolerance)).select(
            "seller_id",
            pl.lit(c).alias("feature"),
            pl.col(c).cast(pl.Float64).alias("stored"),
            pl.col(f"{c}__re").cast(pl.Float64).alias("recomputed"),
        )
        for c in columns
    ]
    empty = pl.DataFrame(
        schema={
            "seller_id": pl.String,
            "feature": pl.String,
            "stored": pl.Float64,
            "recomputed": pl.Float64,
        }
    )
    return pl.concat([empty, *diffs])


def _differs(a: pl.Expr, b: pl.Expr, tolerance: float) -> pl.Expr:
    both_null = a.is_null() & b.is_null()
    one_null = a.is_null() ^ b.is_null()
    a, b = a.cast(pl.Float64), b.cast(pl.Float64)
    far = (a - b).abs() > tolerance * pl.max_horizontal(pl.lit(1.0), a.abs(), b.abs())
    return ~both_null & (one_null | far.fill_null(True))
