"""The churn label: did an active seller's 45-day silence mark pass with no new sale?

With L the day of the seller's last sale strictly before the reference date D, the seller
churned at D when no sale falls on any day in [D, L + horizon]. A sale on D itself or on
L + horizon exactly still counts as "stayed". The label can only be read once the data
reaches past L + horizon, so a label is *mature* only when L + horizon (at 00:00) is
strictly before the last purchase timestamp in the data; immature labels are kept in the
output (flagged) but must never reach training or evaluation.
"""

from __future__ import annotations

import polars as pl

from olist_churn_dagster.lib.sales import seller_sale_days
from olist_churn_dagster.lib.tables import KEYS


def _check_spine(spine: pl.DataFrame) -> None:
    missing = [c for c in KEYS if c not in spine.columns]
    if missing:
        raise ValueError(f"churn_labels: spine lacks column(s) {missing}; expected {KEYS}")
    if spine.select(KEYS).is_duplicated().any():
        raise ValueError("churn_labels: spine has duplicate (reference_date, seller_id) rows")


def churn_labels(
    orders: pl.DataFrame,
    order_items: pl.DataFrame,
    spine: pl.DataFrame,
    *,
    horizon_days: int = 45,
) -> pl.DataFrame:
    """Label every (reference_date, seller_id) of the spine in one pass.

    Two as-of joins against the seller's sale days give L (last sale day before D) and the
    first sale day on or after D; churn is "that next sale is missing or after L + horizon".
    Returns the spine's columns plus `last_sale_date`, `churned` (Int8) and `label_mature`.
    A spine row without any earlier sale (not an active seller) gets a null label that is
    never mature.
    """
    if horizon_days < 1:
        raise ValueError(f"churn_labels: horizon_days must be at least 1, got {horizon_days}")
    _check_spine(spine)
    spine = spine.with_columns(pl.col("reference_date").cast(pl.Date))
    days = seller_sale_days(orders, order_items).sort("sale_date")
    data_end = orders.get_column("order_purchase_timestamp").max()
    left = spine.select(KEYS).sort("reference_date")

    last_sale = left.join_asof(
        days.rename({"sale_date": "last_sale_date"}),
        left_on="reference_date",
        right_on="last_sale_date",
        by="seller_id",
        strategy="backward",
        allow_exact_matches=False,
        check_sortedness=False,
    )
    next_sale = last_sale.join_asof(
        days.rename({"sale_date": "next_sale_date"}),
        left_on="reference_date",
        right_on="next_sale_date",
        by="seller_id",
        strategy="forward",
        allow_exact_matches=True,
        check_sortedness=False,
    )
    mark = pl.col("last_sale_date") + pl.duration(days=horizon_days)
    labelled = next_sale.select(
        *KEYS,
        "last_sale_date",
        pl.when(pl.col("last_sale_date").is_null())
        .then(None)
        .otherwise(pl.col("next_sale_date").is_null() | (pl.col("next_sale_date") > mark))
        .cast(pl.Int8)
        .alias("churned"),
        (
            pl.col("last_sale_date").is_not_null()
            & (mark.cast(pl.Datetime("us")) < pl.lit(data_end, dtype=pl.Datetime("us")))
        )
        .fill_null(False)
        .alias("label_mature"),
    )
    extra = [c for c in spine.columns if c not in (*KEYS, *labelled.columns)]
    return spine.select(*KEYS, *extra).join(labelled, on=KEYS, how="left", maintain_order="left")
