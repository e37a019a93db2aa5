"""The input contract: the nine Olist source tables, their files, columns and keys.

Every other module (generator, loader, snapshots, features) takes table names, column
names and dtypes from here, so the contract lives in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
TIMESTAMP = pl.Datetime("us")


@dataclass(frozen=True)
class TableSpec:
    """One source table: its Kaggle file name, typed columns and primary key."""

    name: str
    file_name: str
    columns: dict[str, pl.DataType] = field(hash=False)
    primary_key: tuple[str, ...]
    required: bool = True

    @property
    def timestamp_columns(self) -> list[str]:
        return [c for c, t in self.columns.items() if t == TIMESTAMP]

    @property
    def schema(self) -> pl.Schema:
        return pl.Schema(self.columns)


ORDERS = TableSpec(
    name="orders",
    file_name="olist_orders_dataset.csv",
    columns={
        "order_id": pl.String(),
        "customer_id": pl.String(),
        "order_status": pl.String(),
        "order_purchase_timestamp": TIMESTAMP,
        "order_approved_at": TIMESTAMP,
        "order_delivered_carrier_date": TIMESTAMP,
        "order_delivered_customer_date": TIMESTAMP,
        "order_estimated_delivery_date": TIMESTAMP,
    },
    primary_key=("order_id",),
)

ORDER_ITEMS = TableSpec(
    name="order_items",
    file_name="olist_order_items_dataset.csv",
    columns={
        "order_id": pl.String(),
        "order_item_id": pl.Int64(),
        "product_id": pl.String(),
        "seller_id": pl.String(),
        "shipping_limit_date": TIMESTAMP,
        "price": pl.Float64(),
        "freight_value": pl.Float64(),
    },
    primary_key=("order_id", "order_item_id"),
)

ORDER_PAYMENTS = TableSpec(
    name="order_payments",
    file_name="olist_order_payments_dataset.csv",
    columns={
        "order_id": pl.String(),
        "payment_sequential": pl.Int64(),
        "payment_type": pl.String(),
        "payment_installments": pl.Int64(),
        "payment_value": pl.Float64(),
    },
    primary_key=("order_id", "payment_sequential"),
)

ORDER_REVIEWS = TableSpec(
    name="order_reviews",
    file_name="olist_order_reviews_dataset.csv",
    columns={
        "review_id": pl.String(),
        "order_id": pl.String(),
        "review_score": pl.Int64(),
        "review_comment_title": pl.String(),
        "review_comment_message": pl.String(),
        "review_creation_date": TIMESTAMP,
        "review_answer_timestamp": TIMESTAMP,
    },
    # review_id alone repeats in the real data (one review answering several orders).
    primary_key=("review_id", "order_id"),
)

CUSTOMERS = TableSpec(
    name="customers",
    file_name="olist_customers_dataset.csv",
    columns={
        "customer_id": pl.String(),
        "customer_unique_id": pl.String(),
        "customer_zip_code_prefix": pl.String(),
        "customer_city": pl.String(),
        "customer_state": pl.String(),
    },
    primary_key=("customer_id",),
)

PRODUCTS = TableSpec(
    name="products",
    file_name="olist_products_dataset.csv",
    columns={
        "product_id": pl.String(),
        "product_category_name": pl.String(),
        # The real file misspells "length" as "lenght"; the contract keeps the real names.
        "product_name_lenght": pl.Int64(),
        "product_description_lenght": pl.Int64(),
        "product_photos_qty": pl.Int64(),
        "product_weight_g": pl.Int64(),
        "product_length_cm": pl.Int64(),
        "product_height_cm": pl.Int64(),
        "product_width_cm": pl.Int64(),
    },
    primary_key=("product_id",),
)

SELLERS = TableSpec(
    name="sellers",
    file_name="olist_sellers_dataset.csv",
    columns={
        "seller_id": pl.String(),
        "seller_zip_code_prefix": pl.String(),
        "seller_city": pl.String(),
        "seller_state": pl.String(),
    },
    primary_key=("seller_id",),
)

CATEGORY_TRANSLATION = TableSpec(
    name="category_translation",
    file_name="product_category_name_translation.csv",
    columns={
        "product_category_name": pl.String(),
        "product_category_name_english": pl.String(),
    },
    primary_key=("product_category_name",),
)

GEOLOCATION = TableSpec(
    name="geolocation",
    file_name="olist_geolocation_dataset.csv",
    columns={
        "geolocation_zip_code_prefix": pl.String(),
        "geolocation_lat": pl.Float64(),
        "geolocation_lng": pl.Float64(),
        "geolocation_city": pl.String(),
        "geolocation_state": pl.String(),
    },
    # The real geolocation file has many rows per zip prefix and no key at all.
    primary_key=(),
    required=False,
)

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        ORDERS,
        ORDER_ITEMS,
        ORDER_PAYMENTS,
        ORDER_REVIEWS,
        CUSTOMERS,
        PRODUCTS,
        SELLERS,
        CATEGORY_TRANSLATION,
        GEOLOCATION,
    )
}
# Foreign keys of the contract: (child table, child column, parent table, parent column).
REFERENCES: tuple[tuple[str, str, str, str], ...] = (
    ("order_items", "order_id", "orders", "order_id"),
    ("order_items", "seller_id", "sellers", "seller_id"),
    ("order_items", "product_id", "products", "product_id"),
    ("order_payments", "order_id", "orders", "order_id"),
    ("order_reviews", "order_id", "orders", "order_id"),
    ("orders", "customer_id", "customers", "customer_id"),
)


REQUIRED_TABLES: list[str] = [name for name, spec in TABLES.items() if spec.required]

# Order statuses as they appear in the real data. Only "delivered" and "shipped" have a
# timestamp of their own; the point-in-time rules roll only those two back.
ORDER_STATUSES = (
    "delivered",
    "shipped",
    "canceled",
    "unavailable",
    "invoiced",
    "processing",
    "created",
    "approved",
)
# Orders in these statuses never became a sale.
NON_SALE_STATUSES = ("canceled", "unavailable")

PAYMENT_TYPES = ("credit_card", "boleto", "voucher", "debit_card", "not_defined")

BRAZIL_STATES = (
    "AC", "AL", "AM", "AP", "BA", "CE", "DF", "ES", "GO", "MA", "MG", "MS", "MT", "PA",
    "PB", "PE", "PI", "PR", "RJ", "RN", "RO", "RR", "RS", "SC", "SE", "SP", "TO",
)  # fmt: skip


def write_table_csv(df: pl.DataFrame, path: Path) -> None:
    """Write a table the way the Kaggle files are written: header, comma, `"` quoting
    where needed, empty string for null, timestamps as `YYYY-MM-DD HH:MM:SS`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_csv(path, datetime_format=TIMESTAMP_FORMAT, null_value="")
