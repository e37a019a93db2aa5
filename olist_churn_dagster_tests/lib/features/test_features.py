"""Exactness of the seller feature tables on tiny hand-made datasets.

Every expected value below is worked out by hand from the rows of its test; D is the
reference date and times are relative to D 00:00.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta

import polars as pl
import pytest

from olist_churn_dagster.lib.features import (
    FEATURE_CATALOGUE,
    FEATURE_FAMILIES,
    TOP_CATEGORIES,
    active_sellers,
    compute_features,
    feature_columns,
)
from olist_churn_dagster.lib.ingest import schema

D = date(2018, 3, 20)
D0 = datetime(2018, 3, 20)


def at(days: float, hours: float = 0, seconds: float = 0) -> datetime:
    """D 00:00 shifted by days, hours and seconds (negative = before D)."""
    return D0 + timedelta(days=days, hours=hours, seconds=seconds)


def order(
    oid: str,
    purchase: datetime,
    status: str = "delivered",
    *,
    customer: str | None = None,
    approved: datetime | None = None,
    carrier: datetime | None = None,
    delivered: datetime | None = None,
    estimate: datetime | None = None,
) -> tuple:
    return (oid, customer or f"c_{oid}", status, purchase, approved, carrier, delivered, estimate)


def item(
    oid: str,
    seller: str,
    price: float,
    *,
    n: int = 1,
    product: str = "p_default",
    freight: float = 0.0,
    limit: datetime | None = None,
) -> tuple:
    return (oid, n, product, seller, limit, price, freight)


def table(spec: schema.TableSpec, rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=spec.schema, orient="row")


def make_raw(
    orders: list[tuple],
    items: list[tuple],
    *,
    payments: list[tuple] = (),
    reviews: list[tuple] = (),
    customers: list[tuple] | None = None,
    products: list[tuple] = (),
    sellers: list[tuple] = (),
) -> dict[str, pl.DataFrame]:
    """A raw-table mapping; customers default to one per order, unique and in SP."""
    if customers is None:
        customers = [(o[1], f"u_{o[1]}", "01000", "city", "SP") for o in orders]
    return {
        "orders": table(schema.ORDERS, orders),
        "order_items": table(schema.ORDER_ITEMS, items),
        "order_payments": table(schema.ORDER_PAYMENTS, list(payments)),
        "order_reviews": table(schema.ORDER_REVIEWS, list(reviews)),
        "customers": table(schema.CUSTOMERS, customers),
        "products": table(schema.PRODUCTS, list(products)),
        "sellers": table(schema.SELLERS, list(sellers)),
        "category_translation": table(schema.CATEGORY_TRANSLATION, []),
    }


def assert_clean(df: pl.DataFrame) -> None:
    """No NaN or inf in any float column."""
    for name, dtype in df.schema.items():
        if dtype == pl.Float64:
            values = df[name].drop_nulls()
            assert values.is_finite().all(), f"{name} has NaN or inf"


def row(df: pl.DataFrame, seller: str, ref: date = D) -> dict:
    rows = df.filter((pl.col("seller_id") == seller) & (pl.col("reference_date") == ref))
    assert rows.height == 1, f"expected one row for {seller} at {ref}, got {rows.height}"
    return rows.row(0, named=True)


def check(actual: dict, expected: dict) -> None:
    for name, value in expected.items():
        got = actual[name]
        if value is None or isinstance(value, int):
            assert got == value, f"{name}: {got!r} != {value!r}"
        else:
            assert got is not None and math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-9), (
                f"{name}: {got!r} != {value!r}"
            )


def features(family: str, raw: dict[str, pl.DataFrame], dates=(D,), **kw) -> pl.DataFrame:
    df = compute_features(family, raw, list(dates), **kw)
    assert_clean(df)
    assert df.columns[:2] == ["reference_date", "seller_id"]
    assert df.columns[2:] == feature_columns(family)
    return df


# ------------------------------------------------------------------------ contract


def test_catalogue_names_are_unique_and_cover_every_column() -> None:
    names = [spec.name for spec in FEATURE_CATALOGUE]
    assert len(names) == len(set(names))
    for family in FEATURE_FAMILIES:
        cols = feature_columns(family)
        assert cols == [s.name for s in FEATURE_CATALOGUE if s.family == family]
        assert all(c.startswith(family + "_") for c in cols)
    assert len(TOP_CATEGORIES) == 15
    assert all(spec.meaning and spec.unit and spec.window for spec in FEATURE_CATALOGUE)


def test_unknown_family_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown feature family"):
        feature_columns("weather")


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_schema_is_the_same_for_empty_and_full_input(family: str) -> None:
    full = features(family, _full_dataset(), dates=(D, D + timedelta(days=1)))
    empty = features(family, make_raw([], []))
    no_dates = compute_features(family, _full_dataset(), [])
    assert full.height > 0
    assert empty.height == 0 and no_dates.height == 0
    assert full.schema == empty.schema == no_dates.schema
    assert full["reference_date"].dtype == pl.Date and full["seller_id"].dtype == pl.String
    assert {dt for dt in full.schema.values()} <= {pl.Date, pl.String, pl.Float64, pl.Int64}


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_one_row_per_active_seller_and_date_in_order(family: str) -> None:
    raw = _full_dataset()
    dates = [D + timedelta(days=1), D, D - timedelta(days=40)]
    df = features(family, raw, dates=dates)
    spine = active_sellers(raw["orders"], raw["order_items"], dates)
    assert df.select("reference_date", "seller_id").equals(
        spine.select("reference_date", "seller_id")
    )
    assert df.select("reference_date", "seller_id").is_unique().all()
    assert df.equals(df.sort("seller_id", "reference_date"))


def test_row_order_check() -> None:
    from olist_churn_dagster.lib.features import _in_row_order

    d1, d2 = date(2018, 1, 1), date(2018, 1, 2)
    keys = {"reference_date": [d1, d2, d1], "seller_id": ["a", "a", "b"]}
    assert _in_row_order(pl.DataFrame(keys))
    assert not _in_row_order(pl.DataFrame(keys).reverse())
    assert not _in_row_order(pl.DataFrame({**keys, "reference_date": [d1, d1, d1]}))
    assert not _in_row_order(pl.DataFrame({**keys, "seller_id": ["a", "b", "a"]}))


# ------------------------------------------------------------------------ activity


def test_activity_boundaries() -> None:
    raw = make_raw(
        [
            order("o_edge_in", at(-1, seconds=86399)),  # D-1 23:59:59: included
            order("o_edge_out", at(0)),  # D 00:00:00: not yet
            order("o_only_at_d", at(0)),
            order("o_45", at(-45, 9)),
            order("o_46", at(-46, 23)),
            order("o_canceled_1", at(-5), "canceled"),
            order("o_canceled_2", at(-3), "unavailable"),
        ],
        [
            item("o_edge_in", "s_edge", 10),
            item("o_edge_out", "s_edge", 99),
            item("o_only_at_d", "s_at_d", 10),
            item("o_45", "s_45", 10),
            item("o_46", "s_46", 10),
            item("o_canceled_1", "s_canceled", 10),
            item("o_canceled_2", "s_canceled", 10),
        ],
    )
    spine = active_sellers(raw["orders"], raw["order_items"], [D])
    assert spine.schema == pl.Schema(
        {
            "reference_date": pl.Date,
            "seller_id": pl.String,
            "last_sale_date": pl.Date,
            "recency_days": pl.Int64,
        }
    )
    assert spine["seller_id"].to_list() == ["s_45", "s_edge"]
    assert spine.filter(pl.col("seller_id") == "s_45")["recency_days"].item() == 45
    edge = row(spine, "s_edge")
    assert edge["recency_days"] == 1 and edge["last_sale_date"] == D - timedelta(days=1)

    sales = features("sales", raw)
    assert sales["seller_id"].to_list() == ["s_45", "s_edge"]
    check(row(sales, "s_edge"), {"sales_orders": 1, "sales_revenue": 10.0})
    # horizon is a parameter: with 46 days the 46-day-old seller is active again
    wide = active_sellers(raw["orders"], raw["order_items"], [D], horizon_days=46)
    assert "s_46" in wide["seller_id"].to_list()


# ------------------------------------------------------------------------------ sales


def test_sales_single_sale() -> None:
    raw = make_raw(
        [order("o1", at(-10, 10))],
        [item("o1", "s1", 100.0, product="pA")],
    )
    r = row(features("sales", raw), "s1")
    # D = Tue 2018-03-20; the sale on Sat 03-10; weeks Mon 03-05, 03-12, 03-19 span it.
    check(
        r,
        {
            "sales_orders": 1,
            "sales_active_days": 1,
            "sales_items": 1,
            "sales_distinct_products": 1,
            "sales_recency_days": 10,
            "sales_revenue": 100.0,
            "sales_avg_ticket": 100.0,
            "sales_order_value_min": 100.0,
            "sales_order_value_max": 100.0,
            "sales_item_price_mean": 100.0,
            "sales_item_price_min": 100.0,
            "sales_item_price_max": 100.0,
            "sales_lifetime_revenue": 100.0,
            "sales_lifetime_orders": 1,
            "sales_tenure_days": 10,
            "sales_mean_gap_days": None,
            "sales_std_gap_days": None,
            "sales_orders_30d": 1,
            "sales_revenue_30d": 100.0,
            "sales_trend_30d": None,  # no orders in the 5 months before the last 30 days
            "sales_week_share": 1 / 3,
        },
    )


def test_sales_window_lifetime_and_gaps() -> None:
    raw = make_raw(
        [
            order("o_old", datetime(2017, 6, 1, 12)),  # before the window: lifetime only
            order("o2", datetime(2018, 1, 5, 9)),
            order("o3", datetime(2018, 1, 5, 18)),
            order("o4", datetime(2018, 2, 14, 8)),
            order("o5", datetime(2018, 3, 1, 20)),
            order("o_cancel", datetime(2018, 3, 5, 8), "canceled"),
            order("o_future", datetime(2018, 3, 25, 8)),
        ],
        [
            item("o_old", "s2", 70.0, product="pZ"),
            item("o2", "s2", 10.0, n=1, product="pA"),
            item("o2", "s2", 20.0, n=2, product="pB"),
            item("o3", "s2", 50.0, product="pA"),
            item("o4", "s2", 40.0, product="pC"),
            item("o5", "s2", 15.0, product="pA"),
            item("o_cancel", "s2", 999.0, product="pD"),
            item("o_future", "s2", 500.0, product="pE"),
        ],
    )
    r = row(features("sales", raw), "s2")
    gaps = [40, 15]  # 01-05 -> 02-14 -> 03-01; the gap from 2017-06-01 starts outside
    mean_gap = sum(gaps) / 2
    std_gap = math.sqrt(sum((g - mean_gap) ** 2 for g in gaps) / (len(gaps) - 1))
    start = max(D - timedelta(days=180), date(2017, 6, 1))
    monday = lambda d: d - timedelta(days=d.weekday())  # noqa: E731
    weeks = (monday(D - timedelta(days=1)) - monday(start)).days // 7 + 1
    check(
        r,
        {
            "sales_orders": 4,
            "sales_active_days": 3,
            "sales_items": 5,
            "sales_distinct_products": 3,
            "sales_recency_days": 19,
            "sales_revenue": 135.0,
            "sales_avg_ticket": 135.0 / 4,
            "sales_order_value_min": 15.0,
            "sales_order_value_max": 50.0,
            "sales_item_price_mean": 27.0,
            "sales_item_price_min": 10.0,
            "sales_item_price_max": 50.0,
            "sales_lifetime_revenue": 205.0,
            "sales_lifetime_orders": 5,
            "sales_tenure_days": (D - date(2017, 6, 1)).days,
            "sales_mean_gap_days": mean_gap,
            "sales_std_gap_days": std_gap,
            "sales_orders_30d": 1,
            "sales_revenue_30d": 15.0,
            "sales_trend_30d": 1 / (3 / 5),
            "sales_week_share": 3 / weeks,
        },
    )
    # a shorter window: only o4 and o5 (days 02-14 and 03-01) are within 40 days
    short = row(features("sales", raw, window_days=40), "s2")
    check(short, {"sales_orders": 2, "sales_revenue": 55.0, "sales_trend_30d": 1 / (1 / (10 / 30))})


# ---------------------------------------------------------------------------- reviews


def review(rid: str, oid: str, score: int, created: datetime, comment: str | None = None):
    return (rid, oid, score, None, comment, created, created + timedelta(days=1))


def test_reviews() -> None:
    raw = make_raw(
        [order("o1", at(-50)), order("o2", at(-60)), order("o3", at(-5)), order("o4", at(-2))],
        [
            item("o1", "s1", 10),
            item("o2", "s1", 10),
            item("o3", "s_silent", 10),
            item("o4", "s1", 10),  # not reviewed (yet)
        ],
        reviews=[
            review("r1", "o1", 4, at(-10), "great"),
            review("r2", "o1", 1, at(0)),  # created at D 00:00: does not exist yet
            review("r3", "o2", 2, at(-1, seconds=86399)),  # D-1 23:59:59: exists
            review("r4", "o2", 5, at(-40)),
        ],
    )
    df = features("reviews", raw)
    scores = [4, 2, 5]
    recent = [4, 2]  # created in the last 30 days
    check(
        row(df, "s1"),
        {
            "reviews_count": 3,
            "reviews_score_mean": sum(scores) / 3,
            "reviews_score_min": 2,
            "reviews_score_max": 5,
            "reviews_share_orders_reviewed": 2 / 3,
            "reviews_share_low_score": 1 / 3,
            "reviews_count_30d": 2,
            "reviews_score_trend_30d": sum(recent) / 2 - sum(scores) / 3,
            "reviews_share_with_comment": 1 / 3,
        },
    )
    check(
        row(df, "s_silent"),
        {
            "reviews_count": 0,
            "reviews_score_mean": None,
            "reviews_score_min": None,
            "reviews_score_max": None,
            "reviews_share_orders_reviewed": 0.0,
            "reviews_share_low_score": None,
            "reviews_count_30d": 0,
            "reviews_score_trend_30d": None,
            "reviews_share_with_comment": None,
        },
    )
    # the day after, the review created at D exists: o1 now has two reviews
    later_d = D + timedelta(days=1)
    later = row(features("reviews", raw, dates=(later_d,)), "s1", later_d)
    check(later, {"reviews_count": 4, "reviews_score_min": 1, "reviews_share_low_score": 2 / 4})


# -------------------------------------------------------------------------- customers


def test_customers() -> None:
    raw = make_raw(
        [
            order("o1", at(-30), customer="c1"),
            order("o2", at(-20), customer="c2"),
            order("o3", at(-10), customer="c3"),
            order("o4", at(-200), customer="c4"),  # u3's first order, outside the window
            order("o5", at(-5), customer="c5"),
            order("o6", at(0), customer="c6"),  # purchased at D: does not exist yet
        ],
        [item(f"o{i}", "s1", 10) for i in range(1, 7)],
        customers=[
            ("c1", "u1", "01000", "x", "SP"),
            ("c2", "u1", "01000", "x", "SP"),
            ("c3", "u2", "20000", "x", "RJ"),
            ("c4", "u3", "20000", "x", "RJ"),
            ("c5", "u3", "30000", "x", "MG"),
            ("c6", "u2", "30000", "x", "AC"),
        ],
        sellers=[("s1", "01000", "x", "SP")],
    )
    r = row(features("customers", raw), "s1")
    expected = {
        "customers_distinct": 3,
        "customers_distinct_states": 3,
        "customers_repeat_share": 1 / 3,  # only u1 bought twice within the window
        "customers_orders_per_customer": 4 / 3,
        "customers_share_same_state": 2 / 4,
        "customers_share_state_sp": 2 / 4,
        "customers_share_state_rj": 1 / 4,
        "customers_share_state_mg": 1 / 4,
        "customers_share_state_ac": 0.0,
    }
    check(r, expected)
    others = [f"customers_share_state_{s.lower()}" for s in schema.BRAZIL_STATES]
    assert sum(r[c] for c in others) == pytest.approx(1.0)


# --------------------------------------------------------------------------- delivery


def test_delivery() -> None:
    raw = make_raw(
        [
            order(  # delivered late, before D
                "A",
                at(-30, 10),
                approved=at(-30, 11),
                carrier=at(-28),
                delivered=at(-20, 12),
                estimate=at(-22),
            ),
            order(  # delivered after D: undelivered at D, already past its estimate
                "B",
                at(-20, 10),
                approved=at(-20, 11),
                carrier=at(-18),
                delivered=at(2),
                estimate=at(-1),
            ),
            order("C", at(-10, 10), "canceled", estimate=at(10)),
            order(
                "E", at(-15, 10), "shipped", approved=at(-15, 11), carrier=at(-12), estimate=at(5)
            ),
            order(  # delivered exactly at D 00:00: not yet at D
                "F",
                at(-8, 10),
                approved=at(-8, 11),
                carrier=at(-6),
                delivered=at(0),
                estimate=at(3),
            ),
        ],
        [
            item("A", "s1", 50, freight=10, limit=at(-29)),
            item("B", "s1", 50, freight=20, limit=at(-17)),
            item("C", "s1", 50, freight=5),
            item("E", "s1", 50, freight=15, limit=at(-10)),
            item("F", "s1", 50, freight=25, limit=at(-5)),
        ],
    )
    r = row(features("delivery", raw), "s1")
    check(
        r,
        {
            "delivery_late_share": 1.0,  # only A is delivered at D, and it was late
            "delivery_cancel_share": 1 / 5,
            "delivery_unavailable_share": 0.0,
            "delivery_freight_mean": 15.0,
            "delivery_freight_min": 5.0,
            "delivery_freight_max": 25.0,
            "delivery_approval_to_delivery_days": 10 + 1 / 24,
            "delivery_purchase_to_delivery_days": 10 + 2 / 24,
            "delivery_days_ahead_of_promise": -2.5,
            # handed to the carrier before D: A, B, F after 1d14h and E after 2d14h
            "delivery_handling_days": (3 * (1 + 14 / 24) + (2 + 14 / 24)) / 4,
            "delivery_late_to_carrier_share": 1 / 4,  # only A was handed over after its limit
            "delivery_open_orders": 3,  # B, E, F (C is canceled)
            "delivery_overdue_share": 1 / 3,  # B
            "delivery_late_share_30d": 1.0,
        },
    )
    # Two days later B and F are delivered: B late, F early.
    later_d = D + timedelta(days=3)
    later = row(features("delivery", raw, dates=(later_d,)), "s1", later_d)
    check(
        later,
        {
            "delivery_late_share": 2 / 3,
            "delivery_open_orders": 1,
            "delivery_overdue_share": 0.0,  # E's estimate (D+5) has not passed
            "delivery_days_ahead_of_promise": (-2.5 - 3 + 3) / 3,
        },
    )


def test_delivery_zero_denominators_are_null() -> None:
    raw = make_raw([order("o1", at(-3), "processing")], [item("o1", "s1", 10)])
    r = row(features("delivery", raw), "s1")
    for name in (
        "delivery_late_share",
        "delivery_approval_to_delivery_days",
        "delivery_purchase_to_delivery_days",
        "delivery_days_ahead_of_promise",
        "delivery_handling_days",
        "delivery_late_to_carrier_share",
        "delivery_late_share_30d",
    ):
        assert r[name] is None, name
    check(r, {"delivery_open_orders": 1, "delivery_overdue_share": 0.0})


# --------------------------------------------------------------------------- payments


def test_payments_allocation_for_a_multi_seller_order() -> None:
    raw = make_raw(
        [order("o1", at(-10)), order("o2", at(-5))],
        [
            item("o1", "s1", 30.0, n=1),
            item("o1", "s2", 50.0, n=2),
            item("o1", "s2", 20.0, n=3),
            item("o2", "s1", 40.0),
        ],
        payments=[
            ("o1", 1, "credit_card", 3, 80.0),
            ("o1", 2, "voucher", 1, 20.0),
            ("o2", 1, "boleto", 1, 50.0),
        ],
    )
    df = features("payments", raw)
    # s1 owns 30 of o1's 100 in item prices, s2 the other 70
    check(
        row(df, "s1"),
        {
            "payments_count": 3,
            "payments_value": 24.0 + 6.0 + 50.0,
            "payments_credit_card_count": 1,
            "payments_credit_card_value": 24.0,
            "payments_credit_card_value_share": 24.0 / 80.0,
            "payments_voucher_value": 6.0,
            "payments_boleto_count": 1,
            "payments_boleto_value_share": 50.0 / 80.0,
            "payments_debit_card_count": 0,
            "payments_debit_card_value_share": 0.0,
            "payments_installments_mean": 5 / 3,
            "payments_installments_min": 1,
            "payments_installments_max": 3,
            "payments_share_orders_installments": 1 / 2,
        },
    )
    check(
        row(df, "s2"),
        {
            "payments_count": 2,
            "payments_value": 70.0,
            "payments_credit_card_value": 56.0,
            "payments_voucher_value": 14.0,
            "payments_credit_card_value_share": 0.8,
            "payments_share_orders_installments": 1.0,
        },
    )
    total = row(df, "s1")["payments_value"] + row(df, "s2")["payments_value"]
    assert total == pytest.approx(150.0)


def test_payments_zero_value_gives_null_shares() -> None:
    raw = make_raw(
        [order("o1", at(-10))],
        [item("o1", "s1", 30.0)],
        payments=[("o1", 1, "voucher", 1, 0.0)],
    )
    r = row(features("payments", raw), "s1")
    check(r, {"payments_count": 1, "payments_value": 0.0, "payments_voucher_value_share": None})


# --------------------------------------------------------------------------- products


def test_products_with_and_without_category() -> None:
    raw = make_raw(
        [order("o1", at(-10)), order("o2", at(-3))],
        [
            item("o1", "s1", 10, n=1, product="p1"),
            item("o1", "s1", 10, n=2, product="p1"),
            item("o1", "s1", 10, n=3, product="p2"),
            item("o2", "s1", 10, n=1, product="p3"),
        ],
        products=[
            ("p1", "bebes", 40, 400, 2, 500, 10, 10, 10),
            ("p2", None, None, None, None, 1500, 20, 20, 20),
            ("p3", "uncommon_category", 20, 100, 1, 50, 5, 5, 4),
        ],
    )
    r = row(features("products", raw), "s1")
    expected = {
        "products_distinct": 3,
        "products_distinct_categories": 2,
        "products_photos_mean": 5 / 3,
        "products_volume_mean": (1000 + 1000 + 8000 + 100) / 4,
        "products_volume_min": 100.0,
        "products_volume_max": 8000.0,
        "products_weight_mean": (500 + 500 + 1500 + 50) / 4,
        "products_name_length_mean": 100 / 3,
        "products_description_length_mean": 900 / 3,
        "products_share_no_category": 1 / 4,
        "products_share_cat_bebes": 2 / 4,
        "products_share_cat_other": 1 / 4,
        "products_share_cat_telefonia": 0.0,
    }
    check(r, expected)
    shares = [c for c in feature_columns("products") if c.startswith("products_share_")]
    assert sum(r[c] for c in shares) == pytest.approx(1.0)


# ----------------------------------------------------------------------- full dataset


def _full_dataset() -> dict[str, pl.DataFrame]:
    """A few sellers touching every table, for the schema and ordering tests."""
    timeline = dict(approved=at(0, 1), carrier=at(1), delivered=at(4), estimate=at(6))
    orders = [
        order(f"o{i}", at(-3 * i, 7), **{k: v - timedelta(days=3 * i) for k, v in timeline.items()})
        for i in range(1, 25)
    ]
    items = [item(f"o{i}", f"s{i % 4}", 10.0 + i, product=f"p{i % 3}") for i in range(1, 25)]
    payments = [
        (f"o{i}", 1, schema.PAYMENT_TYPES[i % 4], 1 + i % 3, 12.0 + i) for i in range(1, 25)
    ]
    reviews = [review(f"r{i}", f"o{i}", 1 + i % 5, at(-3 * i + 5)) for i in range(1, 25)]
    products = [(f"p{j}", "bebes" if j else None, 10, 100, 1, 100, 1, 2, 3) for j in range(3)]
    return make_raw(
        orders,
        items,
        payments=payments,
        reviews=reviews,
        products=products,
        sellers=[(f"s{j}", "01000", "x", "SP") for j in range(4)],
    )
