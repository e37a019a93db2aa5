"""Benchmark of the pure feature core: all six families over many daily reference dates.

    uv run python bench/features_core.py --scale 1 --dates 600
    uv run python bench/features_core.py --data data/raw --dates 600

Data comes from `--data` (a folder the loader reads), else from the built-in generator
(`--scale`, `--seed`), cached under the system temp folder. With `--synthetic` a quick
numpy stand-in of the same size is used instead (no generator needed).

Each family is read in batches of dates sized as the feature assets size them (about
`OLIST_CHURN_FEATURE_BATCH_ROWS` rows each, from the most sellers active on any date), one
frame at a time, so the figures are those of the path a backfill takes, memory included;
`--one-batch` computes every date as one frame instead. Prints the number of batches, then
one line per family: dates, rows, wall and CPU seconds (all threads), and the process's
peak RSS so far. The total counts the six families and what they share
(`lib.features.Backfill`: the sellers' ranks, the sale runs; and the batches' sizes); the
spine line is for reference, inside each family.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from olist_churn_dagster.lib.features import (
    FEATURE_FAMILIES,
    Backfill,
    active_sellers,
    feature_batches,
)
from olist_churn_dagster.lib.ingest import schema
from olist_churn_dagster.lib.sales import sale_items
from olist_churn_dagster.lib.settings import load_settings


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:08d}" for i in range(n)]


def synthetic(scale: float, seed: int, end: date) -> dict[str, pl.DataFrame]:
    """A quick stand-in of the real data's size and shape (skewed sellers, 2 years)."""
    rng = np.random.default_rng(seed)
    n_orders, n_sellers, n_products = int(99_000 * scale), int(3_100 * scale), int(33_000 * scale)
    span = 730
    start = datetime.combine(end - timedelta(days=span), datetime.min.time())
    # growth: later days more likely
    day = np.sort((span * np.sqrt(rng.random(n_orders))).astype(np.int64))
    secs = day * 86400 + rng.integers(0, 86400, n_orders)
    purchase = np.datetime64(start, "us") + secs.astype("timedelta64[s]")
    status = rng.choice(
        ["delivered", "shipped", "canceled", "unavailable", "invoiced", "processing"],
        n_orders,
        p=[0.965, 0.012, 0.007, 0.006, 0.005, 0.005],
    )
    approved = purchase + rng.integers(600, 86400 * 2, n_orders).astype("timedelta64[s]")
    carrier = approved + rng.integers(3600, 86400 * 5, n_orders).astype("timedelta64[s]")
    delivered = carrier + rng.integers(86400, 86400 * 20, n_orders).astype("timedelta64[s]")
    estimate = (purchase + np.timedelta64(86400 * 24, "s")).astype("datetime64[D]")
    undelivered = status != "delivered"
    nat = np.datetime64("NaT", "us")
    order_ids = np.array(_ids("o", n_orders))
    orders = pl.DataFrame(
        {
            "order_id": order_ids,
            "customer_id": _ids("c", n_orders),
            "order_status": status,
            "order_purchase_timestamp": purchase,
            "order_approved_at": approved,
            "order_delivered_carrier_date": np.where(
                undelivered & (status != "shipped"), nat, carrier
            ),
            "order_delivered_customer_date": np.where(undelivered, nat, delivered),
            "order_estimated_delivery_date": estimate.astype("datetime64[us]"),
        }
    ).cast(schema.ORDERS.columns)
    n_items = 1 + rng.binomial(1, 0.1, n_orders) + rng.binomial(1, 0.03, n_orders)
    item_order = np.repeat(np.arange(n_orders), n_items)
    item_seq = np.concatenate([np.arange(1, k + 1) for k in n_items])
    weights = 1 / np.arange(1, n_sellers + 1) ** 0.9
    seller_of_order = rng.choice(n_sellers, n_orders, p=weights / weights.sum())
    seller = seller_of_order[item_order]
    other = rng.random(len(item_order)) < 0.03
    seller[other] = rng.integers(0, n_sellers, other.sum())
    seller_ids = np.array(_ids("s", n_sellers))
    product_ids = np.array(_ids("p", n_products))
    items = pl.DataFrame(
        {
            "order_id": order_ids[item_order],
            "order_item_id": item_seq,
            "product_id": product_ids[rng.integers(0, n_products, len(item_order))],
            "seller_id": seller_ids[seller],
            "shipping_limit_date": approved[item_order] + np.timedelta64(3 * 86400, "s"),
            "price": np.round(rng.lognormal(4.3, 0.9, len(item_order)), 2),
            "freight_value": np.round(rng.lognormal(2.8, 0.5, len(item_order)), 2),
        }
    ).cast(schema.ORDER_ITEMS.columns)
    pay_types = rng.choice(list(schema.PAYMENT_TYPES[:4]), n_orders, p=[0.74, 0.19, 0.05, 0.02])
    payments = pl.DataFrame(
        {
            "order_id": order_ids,
            "payment_sequential": np.ones(n_orders, dtype=np.int64),
            "payment_type": pay_types,
            "payment_installments": rng.integers(1, 11, n_orders),
            "payment_value": np.round(rng.lognormal(4.6, 0.8, n_orders), 2),
        }
    ).cast(schema.ORDER_PAYMENTS.columns)
    reviews = pl.DataFrame(
        {
            "review_id": _ids("r", n_orders),
            "order_id": order_ids,
            "review_score": rng.choice([1, 2, 3, 4, 5], n_orders, p=[0.11, 0.03, 0.08, 0.19, 0.59]),
            "review_comment_title": None,
            "review_comment_message": pl.Series(
                np.where(rng.random(n_orders) < 0.4, "ok", "")
            ).replace("", None),
            "review_creation_date": (delivered + np.timedelta64(86400, "s"))
            .astype("datetime64[D]")
            .astype("datetime64[us]"),
            "review_answer_timestamp": delivered + np.timedelta64(3 * 86400, "s"),
        }
    ).cast(schema.ORDER_REVIEWS.columns)
    customers = pl.DataFrame(
        {
            "customer_id": _ids("c", n_orders),
            "customer_unique_id": np.array(_ids("u", int(n_orders * 0.97)))[
                rng.integers(0, int(n_orders * 0.97), n_orders)
            ],
            "customer_zip_code_prefix": "01000",
            "customer_city": "x",
            "customer_state": rng.choice(list(schema.BRAZIL_STATES), n_orders),
        }
    ).cast(schema.CUSTOMERS.columns)
    cats = np.array([*schema.BRAZIL_STATES, "cama_mesa_banho", "bebes", ""])
    dims = rng.integers(1, 60, (n_products, 3))
    products = pl.DataFrame(
        {
            "product_id": product_ids,
            "product_category_name": pl.Series(
                cats[rng.integers(0, len(cats), n_products)]
            ).replace("", None),
            "product_name_lenght": rng.integers(10, 60, n_products),
            "product_description_lenght": rng.integers(50, 3000, n_products),
            "product_photos_qty": rng.integers(1, 8, n_products),
            "product_weight_g": rng.integers(50, 30000, n_products),
            "product_length_cm": dims[:, 0],
            "product_height_cm": dims[:, 1],
            "product_width_cm": dims[:, 2],
        }
    ).cast(schema.PRODUCTS.columns)
    sellers = pl.DataFrame(
        {
            "seller_id": seller_ids,
            "seller_zip_code_prefix": "01000",
            "seller_city": "x",
            "seller_state": rng.choice(["SP", "MG", "PR", "RJ"], n_sellers),
        }
    ).cast(schema.SELLERS.columns)
    return {
        "orders": orders,
        "order_items": items,
        "order_payments": payments,
        "order_reviews": reviews,
        "customers": customers,
        "products": products,
        "sellers": sellers,
    }


def generated(scale: float, seed: int) -> dict[str, pl.DataFrame]:
    """Data from the built-in generator, written once per (scale, seed) to a temp cache."""
    from olist_churn_dagster.generator.marketplace import generate_dataset
    from olist_churn_dagster.lib.ingest.loader import load_dataset

    folder = Path(tempfile.gettempdir()) / f"olist_bench_s{scale}_seed{seed}"
    if not (folder / "_SUCCESS_bench").exists():
        generate_dataset(folder, scale=scale, seed=seed)
        (folder / "_SUCCESS_bench").touch()
    return load_dataset(folder)


def _line(name: str, n_dates: int, rows: int, cols: int, seconds: float, cpu: float) -> None:
    print(
        f"{name:<10} {n_dates:>6} {rows:>10} {cols:>5} {seconds:>8.2f} "
        f"{cpu:>8.2f} {_peak_rss_mb():>8.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dates", type=int, default=600, help="number of daily dates")
    parser.add_argument("--data", type=Path, help="a folder with the nine CSV files")
    parser.add_argument("--synthetic", action="store_true", help="use the numpy stand-in")
    parser.add_argument("--families", nargs="*", default=list(FEATURE_FAMILIES))
    parser.add_argument(
        "--one-batch",
        action="store_true",
        help="every date as one frame per family, instead of the feature assets' batches",
    )
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    if args.data:
        from olist_churn_dagster.lib.ingest.loader import load_dataset

        raw = load_dataset(args.data)
    elif args.synthetic:
        raw = synthetic(args.scale, args.seed, date.today())
    else:
        raw = generated(args.scale, args.seed)
    load_s = time.perf_counter() - t0
    last = raw["orders"]["order_purchase_timestamp"].max().date()
    dates = [last + timedelta(days=1 - i) for i in range(args.dates)][::-1]
    print(
        f"data: {raw['orders'].height} orders, {raw['order_items'].height} items, "
        f"{raw['order_items']['seller_id'].n_unique()} sellers (ready in {load_s:.1f} s); "
        f"dates {dates[0]} .. {dates[-1]}"
    )
    settings = load_settings()
    window, horizon = settings.feature_window_days, settings.churn_horizon_days
    header = ("family", "dates", "rows", "cols", "seconds", "cpu s", "peak MB")
    t, c = time.perf_counter(), time.process_time()
    spine = active_sellers(raw["orders"], raw["order_items"], dates, horizon_days=horizon)
    spine_line = (spine.height, spine.width, time.perf_counter() - t, time.process_time() - c)
    del spine
    # What the families share, counted in the total: as the assets do, once per backfill.
    t, c = time.perf_counter(), time.process_time()
    sales = sale_items(raw["orders"], raw["order_items"])
    shared = Backfill(raw, dates, horizon_days=horizon, sales=sales)
    if args.one_batch:
        batches, how = [dates], "--one-batch"
    else:
        batches = shared.batches(settings.feature_batch_rows)
        most = max(shared.active_counts)
        how = f"up to {most:,} active sellers a date, {settings.feature_batch_rows:,} rows a batch"
    del sales
    total, total_cpu = time.perf_counter() - t, time.process_time() - c
    print(f"batches: {len(batches)} of up to {len(batches[0])} dates ({how})")
    print("{:<10} {:>6} {:>10} {:>5} {:>8} {:>8} {:>8}".format(*header))
    _line("(spine)", len(dates), *spine_line)
    runs = shared.runs.runs
    _line("(shared)", len(dates), runs.height, runs.width, total, total_cpu)
    for family in args.families:
        t, c = time.perf_counter(), time.process_time()
        rows = cols = 0
        # One frame at a time, as the asset writes them: only the timeline and one batch
        # are held at once.
        for frame in feature_batches(
            family, raw, batches, window_days=window, horizon_days=horizon, shared=shared
        ):
            rows, cols = rows + frame.height, frame.width
            del frame
        s, cpu = time.perf_counter() - t, time.process_time() - c
        total, total_cpu = total + s, total_cpu + cpu
        _line(family, len(dates), rows, cols, s, cpu)
    print(f"{'total':<10} {'':>6} {'':>10} {'':>5} {total:>8.2f} {total_cpu:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
