"""What counts as a sale: the one definition behind activity, features and labels.

A sale is an order item whose order was not canceled or unavailable. Those two statuses
have no timestamp of their own, so they are taken as they stand in the data (an order
canceled later is treated as never sold, at every reference date).
"""

from __future__ import annotations

import polars as pl

from olist_churn_dagster.lib.ingest.schema import NON_SALE_STATUSES


def sale_items(orders: pl.DataFrame, order_items: pl.DataFrame) -> pl.DataFrame:
    """Order items that are sales, with the order's purchase time and day."""
    sold_orders = orders.filter(~pl.col("order_status").is_in(NON_SALE_STATUSES)).select(
        "order_id",
        "order_purchase_timestamp",
        pl.col("order_purchase_timestamp").dt.date().alias("sale_date"),
    )
    return order_items.join(sold_orders, on="order_id", how="inner")


def seller_sale_days(orders: pl.DataFrame, order_items: pl.DataFrame) -> pl.DataFrame:
    """Distinct (seller_id, sale_date) pairs: the days on which each seller sold."""
    return (
        sale_items(orders, order_items)
        .select("seller_id", "sale_date")
        .unique()
        .sort("seller_id", "sale_date")
    )
