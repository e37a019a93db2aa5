"""The built-in synthetic Olist marketplace: writes the nine Kaggle CSV files.

A seeded, vectorised simulation: market demand (growth, weekdays, Black Friday) is shared
among sellers with heavy-tailed sizes and lifecycles; sellers with more late deliveries,
worse reviews, narrower catalogues, lower prices or less tenure churn sooner, and their
sales fade before they stop. Orders get a full delivery timeline, then the whole dataset
is cut at the snapshot moment (the end date's midnight), so recent orders look live.
Same arguments give byte-identical files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from olist_churn_dagster.lib import generator_extras as gx
from olist_churn_dagster.lib import generator_orders as go
from olist_churn_dagster.lib.generator_sellers import (
    DEFAULT_SPAN_DAYS,
    Sellers,
    demand_curve,
    draw_sellers,
    sale_events,
    seller_count,
)
from olist_churn_dagster.lib.generator_util import DAY, draw, hex_ids, timestamps
from olist_churn_dagster.lib.schema import (
    ORDER_STATUSES,
    PAYMENT_TYPES,
    PRODUCTS,
    SELLERS,
    TABLES,
    write_table_csv,
)

# Tunes how many products a seller's sales spread over (~33k products at scale 1).
CATALOGUE_FACTOR = 0.75
_STREAMS = (
    "sellers",
    "sales",
    "orders",
    "customers",
    "items",
    "products",
    "payments",
    "timeline",
    "reviews",
    "ids",
    "geo",
)


def default_real_dir() -> Path | None:
    """`../shared/olist-real` next to the repository, if that folder exists."""
    candidate = Path(__file__).resolve().parents[3] / "shared" / "olist-real"
    return candidate if candidate.is_dir() else None


def resolve_span(start: date | None, end: date | None) -> tuple[date, date]:
    """Default end is yesterday (the data looks live); default start ~25 months earlier."""
    end = end or date.today() - timedelta(days=1)
    start = start or end - timedelta(days=DEFAULT_SPAN_DAYS - 1)
    if start >= end:
        raise ValueError(f"generator span: start {start} must be before end {end}")
    return start, end


def _read(path: Path) -> pl.DataFrame | None:
    return pl.read_csv(path, infer_schema=False) if path.is_file() else None


def load_reference(real_dir: Path | None) -> gx.Reference:
    """The real files that are present in real_dir, typed; missing ones stay None."""
    if real_dir is None:
        return gx.Reference(None, None, None, None)
    sellers = _read(real_dir / SELLERS.file_name)
    products = _read(real_dir / PRODUCTS.file_name)
    payments = _read(real_dir / TABLES["order_payments"].file_name)
    categories = _read(real_dir / TABLES["category_translation"].file_name)
    if products is not None:
        products = products.cast(
            {c: t for c, t in PRODUCTS.columns.items() if c != "product_id"}  # type: ignore[misc]
        )
    if payments is not None:
        payments = payments.cast(TABLES["order_payments"].columns)  # type: ignore[arg-type]
    if categories is not None:
        categories = categories.rename(lambda c: c.lstrip("\ufeff"))
    return gx.Reference(sellers, products, payments, categories)


@dataclass(frozen=True)
class _Products:
    table: pl.DataFrame
    of_item: np.ndarray  # product row of each item
    price_cents: np.ndarray  # per product
    weight: np.ndarray  # per product, grams


def _products(
    rng: np.random.Generator,
    items: go.Items,
    sellers: Sellers,
    ref: gx.Reference,
    id_rng: np.random.Generator,
) -> _Products:
    """Products actually sold, with a category from the seller's few categories."""
    keys, of_item = np.unique(items.product_key, return_inverse=True)
    owner, slot = keys >> 32, keys & 0xFFFFFFFF
    names, weights = gx.category_pool(ref)
    n_sellers = len(sellers)
    cats = draw(rng, weights, n_sellers * 6).reshape(n_sellers, 6)
    width = np.bincount(owner, minlength=n_sellers)
    lam = 0.35 * np.exp(0.5 * sellers.breadth) * np.log1p(width)
    n_cat = 1 + np.minimum(5, rng.poisson(lam))
    cat_idx = cats[owner, slot % n_cat[owner]]
    category = names.gather(cat_idx)
    category = pl.select(pl.when(pl.lit(pl.Series(rng.random(len(keys)) >= 0.02))).then(category))
    category = category.to_series().alias("product_category_name")
    attrs = gx.product_attributes(rng, category, ref)
    weight = attrs["product_weight_g"].fill_null(700).to_numpy().astype(np.float64)
    price = np.exp(sellers.log_price[owner]) * rng.lognormal(0.0, 0.55, len(keys))
    price *= (np.maximum(weight, 50.0) / 700.0) ** 0.2
    cents = np.round(price.clip(0.85, 6735.0) * 100).astype(np.int64)
    table = pl.DataFrame(
        {"product_id": hex_ids(id_rng, len(keys)), "product_category_name": category}
    )
    table = pl.concat([table, attrs], how="horizontal").select(list(PRODUCTS.columns))
    return _Products(table, of_item, cents, weight)


def build_tables(
    *, scale: float, seed: int, start: date, end: date, ref: gx.Reference
) -> dict[str, pl.DataFrame]:
    """The nine tables of the synthetic marketplace, in schema column order."""
    if scale <= 0:
        raise ValueError(f"generator scale must be positive, got {scale}")
    rngs = dict(
        zip(
            _STREAMS,
            (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(_STREAMS))),
            strict=True,
        )
    )
    n_days = (end - start).days + 1
    epoch = (start - date(1970, 1, 1)).days * DAY
    snapshot = n_days * DAY

    demand = demand_curve(start, n_days, scale)
    sellers = draw_sellers(rngs["sellers"], seller_count(n_days, scale), n_days)
    seller_of, day = sale_events(rngs["sales"], sellers, demand)
    purchase = go.purchase_seconds(rngs["orders"], day)
    by_time = np.argsort(purchase, kind="stable")
    seller_of, day, purchase = seller_of[by_time], day[by_time], purchase[by_time]
    n = len(seller_of)
    status = go.final_status(rngs["orders"], sellers.cancel_p[seller_of])

    first_order = gx.customer_identity(rngs["customers"], n)
    customer_places = gx.builtin_places(rngs["customers"], n, sellers=False)[first_order]
    customer_state = gx.state_index(customer_places["state"])
    seller_places = gx.seller_places(rngs["sellers"], len(sellers), ref)
    seller_state = gx.state_index(seller_places["state"])

    ids = rngs["ids"]
    order_ids = hex_ids(ids, n)
    seller_ids = hex_ids(ids, len(sellers))

    items = go.build_items(rngs["items"], seller_of, status, sellers, CATALOGUE_FACTOR)
    products = _products(rngs["products"], items, sellers, ref, ids)
    transit_item = gx.transit_days(seller_state[items.seller], customer_state[items.order])
    rng_p = rngs["products"]
    freight = 5.0 + 0.0022 * products.weight[products.of_item] + 3.0 + 0.5 * transit_item
    freight_cents = np.round(freight * rng_p.lognormal(0.0, 0.25, len(freight)) * 100)
    freight_cents = freight_cents.astype(np.int64)
    price_cents = products.price_cents[products.of_item]
    total = np.bincount(items.order, weights=price_cents + freight_cents, minlength=n)
    total = total.astype(np.int64)
    empty = total == 0  # unavailable orders have no items but were paid for
    total[empty] = np.round(rng_p.lognormal(np.log(100.0), 0.7, int(empty.sum())) * 100)

    if ref.payments is not None:
        payments = gx.real_payments(rngs["payments"], total, ref.payments)
    else:
        payments = gx.builtin_payments(rngs["payments"], total)
    primary = payments.filter(pl.col("payment_sequential") == 1)
    pay_type = np.zeros(n, dtype=np.int64)
    pay_type[primary["order"].to_numpy()] = primary["type_code"].to_numpy()

    transit = gx.transit_days(seller_state[seller_of], customer_state)
    fading = day >= sellers.exit[seller_of] - sellers.decline_days[seller_of]
    late_p = sellers.late_p[seller_of] * (0.6 + 0.4 * transit / 6.0) * np.where(fading, 1.8, 1)
    full = go.timeline(
        rngs["timeline"],
        purchase,
        status,
        pay_type,
        transit,
        late_p.clip(0.0, 0.95),
        sellers.handling_days[seller_of],
    )
    status_now, now = go.roll_back(rngs["timeline"], status, full, snapshot)

    reviews = _reviews(rngs["reviews"], full, sellers.bad_review[seller_of], snapshot)
    ts = lambda s: timestamps(s + epoch, s != go._NO_TIME)  # noqa: E731

    perm = rngs["orders"].permutation(n)
    orders = pl.DataFrame(
        {
            "order_id": order_ids,
            "customer_id": (customer_ids := hex_ids(ids, n)),
            "order_status": pl.Series(ORDER_STATUSES).gather(status_now),
            "order_purchase_timestamp": ts(purchase),
            "order_approved_at": ts(now.approved),
            "order_delivered_carrier_date": ts(now.carrier),
            "order_delivered_customer_date": ts(now.delivered),
            "order_estimated_delivery_date": ts(now.estimated),
        }
    )[perm]
    limit_days = 6 + draw(rngs["items"], [0.5, 0.3, 0.2], n)
    shipping_limit = purchase + limit_days * DAY
    order_items = pl.DataFrame(
        {
            "order_id": order_ids.gather(items.order),
            "order_item_id": items.item_no.astype(np.int64),
            "product_id": products.table["product_id"].gather(products.of_item),
            "seller_id": seller_ids.gather(items.seller),
            "shipping_limit_date": ts(shipping_limit[items.order]),
            "price": price_cents / 100.0,
            "freight_value": freight_cents / 100.0,
        }
    )
    order_payments = payments.select(
        order_ids.gather(payments["order"].to_numpy()).alias("order_id"),
        "payment_sequential",
        pl.Series(PAYMENT_TYPES).gather(payments["type_code"].to_numpy()).alias("payment_type"),
        "payment_installments",
        "payment_value",
    )
    review_rows = reviews["order"].to_numpy()
    order_reviews = reviews.select(
        hex_ids(ids, reviews.height).alias("review_id"),
        order_ids.gather(review_rows).alias("order_id"),
        "review_score",
        "review_comment_title",
        "review_comment_message",
        ts(reviews["created"].to_numpy()).alias("review_creation_date"),
        ts(reviews["answered"].to_numpy()).alias("review_answer_timestamp"),
    )[rngs["reviews"].permutation(reviews.height)]
    customers = pl.DataFrame(
        {
            "customer_id": customer_ids,
            "customer_unique_id": hex_ids(ids, n).gather(first_order),
            "customer_zip_code_prefix": customer_places["zip"],
            "customer_city": customer_places["city"],
            "customer_state": customer_places["state"],
        }
    )[perm]
    sold = np.bincount(items.seller, minlength=len(sellers)) > 0
    sellers_table = pl.DataFrame(
        {
            "seller_id": seller_ids,
            "seller_zip_code_prefix": seller_places["zip"],
            "seller_city": seller_places["city"],
            "seller_state": seller_places["state"],
        }
    ).filter(pl.Series(sold))
    places = pl.concat(
        [
            customer_places,
            sellers_table.select(
                zip="seller_zip_code_prefix", city="seller_city", state="seller_state"
            ),
        ]
    )
    tables = {
        "orders": orders,
        "order_items": order_items,
        "order_payments": order_payments,
        "order_reviews": order_reviews,
        "customers": customers,
        "products": products.table,
        "sellers": sellers_table,
        "category_translation": gx.categories_table(ref),
        "geolocation": gx.geolocation(rngs["geo"], places),
    }
    return {name: tables[name].select(list(spec.columns)) for name, spec in TABLES.items()}


def _reviews(
    rng: np.random.Generator, full: go.Timeline, bad_review: np.ndarray, snapshot: int
) -> pl.DataFrame:
    """One review for most orders, requested after delivery (or once the estimate has
    passed) and kept only if answered before the snapshot."""
    n = len(bad_review)
    delivered = full.delivered != go._NO_TIME
    trigger = np.where(delivered, full.delivered, full.estimated) // DAY
    created = (trigger + gx.review_days(rng, n)) * DAY
    answered = created + gx.answer_delay(rng, n)
    keep = (rng.random(n) < np.where(delivered, 0.998, 0.9)) & (answered < snapshot)
    weight = np.where(delivered, np.where(full.late, 0.55 + 0.35 * bad_review, bad_review), 0.85)
    score = gx.review_scores(rng, weight)
    title, message = gx.review_texts(rng, score)
    frame = pl.DataFrame(
        {
            "order": np.arange(n),
            "review_score": score.astype(np.int64),
            "review_comment_title": title,
            "review_comment_message": message,
            "created": created,
            "answered": answered,
        }
    )
    return frame.filter(pl.Series(keep))


def write_tables(out_dir: Path, tables: dict[str, pl.DataFrame]) -> None:
    """Write every table to a temporary name first, then rename them all into place, so
    a crash never leaves a half-written file under a final name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, df in tables.items():
            final = out_dir / TABLES[name].file_name
            tmp = out_dir / f".{final.name}.{os.getpid()}.tmp"
            write_table_csv(df, tmp)
            staged.append((tmp, final))
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def generate_dataset(
    out_dir: Path,
    *,
    scale: float = 1.0,
    seed: int = 42,
    start: date | None = None,
    end: date | None = None,
    real_dir: Path | None = None,
) -> dict[str, int]:
    """Writes the nine Kaggle CSV files into out_dir; returns row counts per table name."""
    start, end = resolve_span(start, end)
    tables = build_tables(
        scale=scale, seed=seed, start=start, end=end, ref=load_reference(real_dir)
    )
    write_tables(Path(out_dir), tables)
    return {name: df.height for name, df in tables.items()}
