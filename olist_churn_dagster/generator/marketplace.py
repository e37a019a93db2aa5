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
import shutil
import tempfile
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from olist_churn_dagster.generator import attributes as gx
from olist_churn_dagster.generator import orders as go
from olist_churn_dagster.generator.draws import DAY, draw, hex_ids, timestamps
from olist_churn_dagster.generator.sellers import (
    DEFAULT_SPAN_DAYS,
    DYNAMICS,
    Dynamics,
    Sellers,
    Shift,
    demand_curve,
    draw_sellers,
    sale_events,
    seller_count,
)
from olist_churn_dagster.lib.ingest.schema import (
    ORDER_STATUSES,
    PAYMENT_TYPES,
    PRODUCTS,
    SELLERS,
    TABLES,
    write_table_csv,
)
from olist_churn_dagster.lib.ingest.snapshots import cut_as_of, write_snapshot

# Tunes how many products a seller's sales spread over (~33k products at scale 1).
CATALOGUE_FACTOR = 0.75
_STREAMS = ("sellers", "sales", "orders", "customers", "items", "products", "payments",
            "timeline", "reviews", "ids", "geo")  # fmt: skip


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


@dataclass(frozen=True)
class _World:
    """The simulated marketplace before it is written out as tables."""

    sellers: Sellers
    seller_of: np.ndarray  # per order, in purchase order
    day: np.ndarray
    purchase: np.ndarray  # seconds from the span start
    status: np.ndarray  # final status codes (before the snapshot cut)
    first_order: np.ndarray  # per order: the customer's first order
    customer_places: pl.DataFrame
    seller_places: pl.DataFrame
    customer_state: np.ndarray
    seller_state: np.ndarray


def _streams(seed: int) -> dict[str, np.random.Generator]:
    """One independent random stream per part, so tuning one part leaves the others be."""
    seeds = np.random.SeedSequence(seed).spawn(len(_STREAMS))
    return {name: np.random.default_rng(s) for name, s in zip(_STREAMS, seeds, strict=True)}


def _world(
    rngs: dict[str, np.random.Generator],
    start: date,
    n_days: int,
    scale: float,
    ref: gx.Reference,
    dynamics: Dynamics,
    shift: Shift | None = None,
) -> _World:
    """Sellers, who sold when, order statuses, and where customers and sellers are."""
    demand = demand_curve(start, n_days, scale)
    on = None
    if shift is not None:
        on = ((shift.on - start).days, shift)
        demand[max(on[0], 0) :] *= shift.demand
    sellers = draw_sellers(rngs["sellers"], seller_count(n_days, scale), n_days, dynamics, on)
    seller_of, day = sale_events(rngs["sales"], sellers, demand)
    purchase = go.purchase_seconds(rngs["orders"], day)
    by_time = np.argsort(purchase, kind="stable")
    seller_of, day, purchase = seller_of[by_time], day[by_time], purchase[by_time]
    status = go.final_status(rngs["orders"], sellers.cancel_p[seller_of])
    status[sellers.regular[seller_of]] = go.DELIVERED  # a regular's sale is never lost
    n = len(seller_of)
    first_order = gx.customer_identity(rngs["customers"], n)
    customer_places = gx.builtin_places(rngs["customers"], n, sellers=False)[first_order]
    seller_places = gx.seller_places(rngs["sellers"], len(sellers), ref)
    return _World(
        sellers=sellers,
        seller_of=seller_of,
        day=day,
        purchase=purchase,
        status=status,
        first_order=first_order,
        customer_places=customer_places,
        seller_places=seller_places,
        customer_state=gx.state_index(customer_places["state"]),
        seller_state=gx.state_index(seller_places["state"]),
    )


def _money(
    rng: np.random.Generator, w: _World, items: go.Items, products: _Products
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item prices and freight (cents) and each order's total; freight grows with weight
    and distance. Unavailable orders have no items but were paid for all the same."""
    transit = gx.transit_days(w.seller_state[items.seller], w.customer_state[items.order])
    freight = 8.0 + 0.0022 * products.weight[products.of_item] + 0.5 * transit
    freight_cents = np.round(freight * rng.lognormal(0.0, 0.25, len(freight)) * 100)
    price_cents = products.price_cents[products.of_item]
    weights = price_cents + freight_cents
    total = np.bincount(items.order, weights=weights, minlength=len(w.seller_of)).astype(np.int64)
    empty = total == 0
    total[empty] = np.round(rng.lognormal(np.log(100.0), 0.7, int(empty.sum())) * 100)
    return price_cents, freight_cents.astype(np.int64), total


def _payments(rng: np.random.Generator, total: np.ndarray, ref: gx.Reference) -> pl.DataFrame:
    if ref.payments is not None:
        return gx.real_payments(rng, total, ref.payments)
    return gx.builtin_payments(rng, total)


def _primary_type(payments: pl.DataFrame, n: int) -> np.ndarray:
    """Type code of each order's first payment (it decides how fast approval comes)."""
    primary = payments.filter(pl.col("payment_sequential") == 1)
    codes = np.zeros(n, dtype=np.int64)
    codes[primary["order"].to_numpy()] = primary["type_code"].to_numpy()
    return codes


def _full_timeline(
    rng: np.random.Generator, w: _World, pay_type: np.ndarray, fade_late: float
) -> go.Timeline:
    """Delivery timeline; late risk grows with the seller's trait, distance, and while
    the seller's business is fading towards churn."""
    s = w.seller_of
    transit = gx.transit_days(w.seller_state[s], w.customer_state)
    fading = w.day >= w.sellers.exit[s] - w.sellers.decline_days[s]
    late_p = w.sellers.late_p[s] * (0.6 + 0.4 * transit / 6.0) * np.where(fading, fade_late, 1.0)
    return go.timeline(
        rng,
        w.purchase,
        w.status,
        pay_type,
        transit,
        late_p.clip(0.0, 0.95),
        w.sellers.handling_days[s],
    )


def build_tables(
    *,
    scale: float,
    seed: int,
    start: date,
    end: date,
    ref: gx.Reference,
    dynamics: str = "default",
    shift: Shift | None = None,
) -> dict[str, pl.DataFrame]:
    """The nine tables of the synthetic marketplace, in schema column order; `shift`
    changes the sellers' dynamics from its date on."""
    if scale <= 0:
        raise ValueError(f"generator scale must be positive, got {scale}")
    if dynamics not in DYNAMICS:
        raise ValueError(f"unknown seller dynamics {dynamics!r}; expected one of {list(DYNAMICS)}")
    dyn = DYNAMICS[dynamics]
    rngs = _streams(seed)
    n_days = (end - start).days + 1
    epoch, snapshot = (start - date(1970, 1, 1)).days * DAY, n_days * DAY
    w = _world(rngs, start, n_days, scale, ref, dyn, shift)
    n, ids = len(w.seller_of), rngs["ids"]
    order_ids, customer_ids = hex_ids(ids, n), hex_ids(ids, n)
    seller_ids = hex_ids(ids, len(w.sellers))

    items = go.build_items(rngs["items"], w.seller_of, w.status, w.sellers, CATALOGUE_FACTOR)
    products = _products(rngs["products"], items, w.sellers, ref, ids)
    price_cents, freight_cents, total = _money(rngs["products"], w, items, products)
    payments = _payments(rngs["payments"], total, ref)
    full = _full_timeline(rngs["timeline"], w, _primary_type(payments, n), dyn.fade_late)
    status_now, now = go.roll_back(rngs["timeline"], w.status, full, snapshot)
    reviews = _reviews(rngs["reviews"], full, w.sellers.bad_review[w.seller_of], snapshot)

    def ts(seconds: np.ndarray) -> pl.Series:
        return timestamps(seconds + epoch, seconds != go.NO_TIME)

    shuffle = rngs["orders"].permutation(n)  # the real files are not in time order
    orders = pl.DataFrame(
        {
            "order_id": order_ids,
            "customer_id": customer_ids,
            "order_status": pl.Series(ORDER_STATUSES).gather(status_now),
            "order_purchase_timestamp": ts(w.purchase),
            "order_approved_at": ts(now.approved),
            "order_delivered_carrier_date": ts(now.carrier),
            "order_delivered_customer_date": ts(now.delivered),
            "order_estimated_delivery_date": ts(now.estimated),
        }
    )[shuffle]
    shipping_limit = w.purchase + (6 + draw(rngs["items"], [0.5, 0.3, 0.2], n)) * DAY
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
    order_reviews = reviews.select(
        hex_ids(ids, reviews.height).alias("review_id"),
        order_ids.gather(reviews["order"].to_numpy()).alias("order_id"),
        "review_score",
        "review_comment_title",
        "review_comment_message",
        ts(reviews["created"].to_numpy()).alias("review_creation_date"),
        ts(reviews["answered"].to_numpy()).alias("review_answer_timestamp"),
    )[rngs["reviews"].permutation(reviews.height)]
    customers = pl.DataFrame(
        {
            "customer_id": customer_ids,
            "customer_unique_id": hex_ids(ids, n).gather(w.first_order),
            "customer_zip_code_prefix": w.customer_places["zip"],
            "customer_city": w.customer_places["city"],
            "customer_state": w.customer_places["state"],
        }
    )[shuffle]
    sellers = w.seller_places.select(
        seller_ids.alias("seller_id"),
        pl.col("zip").alias("seller_zip_code_prefix"),
        pl.col("city").alias("seller_city"),
        pl.col("state").alias("seller_state"),
    ).filter(pl.Series(np.bincount(items.seller, minlength=len(w.sellers)) > 0))
    places = pl.concat([w.customer_places, w.seller_places[np.unique(items.seller)]])
    tables = {
        "orders": orders,
        "order_items": order_items,
        "order_payments": order_payments,
        "order_reviews": order_reviews,
        "customers": customers,
        "products": products.table,
        "sellers": sellers,
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
    delivered = full.delivered != go.NO_TIME
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
            staged.append((out_dir / f".{final.name}.{os.getpid()}.tmp", final))
            write_table_csv(df, staged[-1][0])
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
    dynamics: str = "default",
    shift: Shift | None = None,
) -> dict[str, int]:
    """Writes the nine Kaggle CSV files into out_dir; returns row counts per table name.

    Scale 1 over the default ~25-month span is about the size of the real dataset; a
    longer span keeps adding orders at the mature market's daily rate. `dynamics` names a
    preset of `sellers.DYNAMICS` (what drives churn and how abruptly it comes); `shift`
    changes it from a date on (`sellers.Shift`).
    """
    tables = _marketplace(scale, seed, *resolve_span(start, end), real_dir, dynamics, shift)
    write_tables(Path(out_dir), tables)
    return {name: df.height for name, df in tables.items()}


def _marketplace(
    scale: float,
    seed: int,
    start: date,
    end: date,
    real_dir: Path | None,
    dynamics: str,
    shift: Shift | None = None,
) -> dict[str, pl.DataFrame]:
    return build_tables(
        scale=scale,
        seed=seed,
        start=start,
        end=end,
        ref=load_reference(real_dir),
        dynamics=dynamics,
        shift=shift,
    )


def generate_demo_feed(
    raw_dir: Path,
    feed_dir: Path,
    *,
    feed_days: int,
    scale: float = 1.0,
    seed: int = 42,
    start: date | None = None,
    end: date | None = None,
    real_dir: Path | None = None,
    dynamics: str = "default",
    shift: Shift | None = None,
) -> tuple[date, dict[str, int]]:
    """The demo's export and the feed that follows it, from one marketplace.

    `feed_dir` gets the whole dataset (as of the day after `end`); `raw_dir` gets it as of
    `feed_days` days earlier, declared in its `_SUCCESS` manifest, so that replaying the
    last `feed_days` days from `feed_dir` delivers snapshots that are each newer than what
    was loaded from `raw_dir`. Returns the export's as-of date and the feed's row counts.
    """
    if feed_days < 1:
        raise ValueError(f"feed_days must be at least 1, got {feed_days}")
    if Path(raw_dir).exists() and any(Path(raw_dir).iterdir()):
        raise ValueError(f"{raw_dir} is not empty: the demo export goes into an empty folder")
    start, end = resolve_span(start, end)
    as_of = end + timedelta(days=1 - feed_days)
    if as_of <= start:
        raise ValueError(f"a feed of {feed_days} days leaves nothing before it in {start}..{end}")
    tables = _marketplace(scale, seed, start, end, real_dir, dynamics, shift)
    write_tables(Path(feed_dir), tables)
    _write_export(cut_as_of(tables, as_of), Path(raw_dir), as_of)
    return as_of, {name: df.height for name, df in tables.items()}


def _write_export(tables: dict[str, pl.DataFrame], raw_dir: Path, as_of: date) -> None:
    """Written as a snapshot is (files, then the manifest), beside `raw_dir`, then renamed
    onto it: an empty or absent `raw_dir` gets a whole export or nothing."""
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{raw_dir.name}-", dir=raw_dir.parent))
    try:
        os.replace(write_snapshot(tables, staging, as_of), raw_dir)
        umask = os.umask(0)
        os.umask(umask)
        raw_dir.chmod(0o777 & ~umask)  # a folder as mkdir makes it, not mkdtemp's 0700
    finally:
        shutil.rmtree(staging, ignore_errors=True)
