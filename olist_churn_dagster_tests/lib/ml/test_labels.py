from datetime import date, datetime, timedelta

import polars as pl
import pytest

from olist_churn_dagster.lib.ingest.schema import ORDER_ITEMS, ORDERS
from olist_churn_dagster.lib.ml.labels import churn_labels

D = date(2018, 3, 1)
L = date(2018, 2, 20)  # every seller below last sold on L, 9 days before D


def _sales(rows: list[tuple[str, date, str]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Orders and items from (seller_id, purchase day, status), one item per order."""
    orders = pl.DataFrame(
        {
            "order_id": [f"o{i}" for i in range(len(rows))],
            "customer_id": [f"c{i}" for i in range(len(rows))],
            "order_status": [status for _, _, status in rows],
            "order_purchase_timestamp": [
                datetime.combine(day, datetime.min.time()) + timedelta(hours=10)
                for _, day, _ in rows
            ],
        }
    ).with_columns(
        pl.lit(None, dtype=ORDERS.columns[c]).alias(c)
        for c in ORDERS.columns
        if c not in ("order_id", "customer_id", "order_status", "order_purchase_timestamp")
    )
    items = pl.DataFrame(
        {
            "order_id": [f"o{i}" for i in range(len(rows))],
            "order_item_id": [1] * len(rows),
            "product_id": ["p"] * len(rows),
            "seller_id": [seller for seller, _, _ in rows],
            "shipping_limit_date": [None] * len(rows),
            "price": [10.0] * len(rows),
            "freight_value": [1.0] * len(rows),
        },
        schema=ORDER_ITEMS.schema,
    )
    return orders.select(list(ORDERS.columns)), items


def _label(rows, spine_rows, horizon_days: int = 45) -> dict[str, dict]:
    orders, items = _sales(rows)
    spine = pl.DataFrame(
        {"reference_date": [d for d, _ in spine_rows], "seller_id": [s for _, s in spine_rows]}
    )
    out = churn_labels(orders, items, spine, horizon_days=horizon_days)
    assert out.height == spine.height
    assert out.schema["churned"] == pl.Int8
    assert out.schema["label_mature"] == pl.Boolean
    return {r["seller_id"]: r for r in out.iter_rows(named=True)}


def _d(days: int) -> date:
    return L + timedelta(days=days)


# Enough later data that every label with L + 45 is mature.
FAR = ("filler", date(2018, 12, 31), "delivered")


def test_return_within_horizon_is_not_churned_and_silence_is_churned():
    rows = [
        ("back", L, "delivered"),
        ("back", _d(20), "delivered"),
        ("gone", L, "delivered"),
        ("gone", _d(120), "delivered"),
        FAR,
    ]
    out = _label(rows, [(D, "back"), (D, "gone")])
    assert out["back"]["churned"] == 0
    assert out["gone"]["churned"] == 1
    assert out["back"]["last_sale_date"] == L
    assert out["back"]["label_mature"] and out["gone"]["label_mature"]


def test_exact_45_day_mark_counts_and_the_day_after_does_not():
    rows = [
        ("on_mark", L, "delivered"),
        ("on_mark", _d(45), "delivered"),
        ("after_mark", L, "delivered"),
        ("after_mark", _d(46), "delivered"),
        FAR,
    ]
    out = _label(rows, [(D, "on_mark"), (D, "after_mark")])
    assert out["on_mark"]["churned"] == 0
    assert out["after_mark"]["churned"] == 1


def test_sale_on_reference_day_is_not_churn_and_sales_before_d_set_l():
    rows = [
        ("same_day", _d(-30), "delivered"),
        ("same_day", L, "delivered"),
        ("same_day", D, "delivered"),
        FAR,
    ]
    out = _label(rows, [(D, "same_day")])
    assert out["same_day"]["churned"] == 0
    # L is the last sale strictly before D, not D itself.
    assert out["same_day"]["last_sale_date"] == L


def test_canceled_orders_are_not_sales():
    rows = [
        ("canceled_return", L, "delivered"),
        ("canceled_return", _d(10), "canceled"),
        ("canceled_return", _d(11), "unavailable"),
        # A canceled order cannot move L either.
        ("canceled_last", L, "delivered"),
        ("canceled_last", D - timedelta(days=1), "canceled"),
        ("canceled_last", _d(46), "delivered"),
        FAR,
    ]
    out = _label(rows, [(D, "canceled_return"), (D, "canceled_last")])
    assert out["canceled_return"]["churned"] == 1
    assert out["canceled_last"]["last_sale_date"] == L
    assert out["canceled_last"]["churned"] == 1


def test_maturity_needs_data_past_the_mark():
    # The data's last purchase is 10:00 on L + 45: the mark (L + 45 at 00:00) is before it.
    mature = _label([("s", L, "delivered"), ("x", _d(45), "canceled")], [(D, "s")])
    assert mature["s"]["label_mature"] is True
    # Data ending 10:00 on L + 44: the mark has not passed yet.
    immature = _label([("s", L, "delivered"), ("x", _d(44), "delivered")], [(D, "s")])
    assert immature["s"]["label_mature"] is False
    assert immature["s"]["churned"] == 1  # provisional, and flagged immature


def test_label_uses_the_seller_own_history_across_dates_and_horizon_setting():
    rows = [
        ("a", date(2018, 1, 5), "delivered"),
        ("a", date(2018, 2, 25), "delivered"),
        ("b", date(2018, 1, 10), "delivered"),
        FAR,
    ]
    orders, items = _sales(rows)
    spine = pl.DataFrame(
        {
            "reference_date": [date(2018, 2, 1), date(2018, 2, 1), date(2018, 3, 1)],
            "seller_id": ["a", "b", "a"],
        }
    )
    out = churn_labels(orders, items, spine).sort("reference_date", "seller_id")
    # a at Feb 1: L = Jan 5, mark = Feb 19, next sale Feb 25 -> churned.
    # b at Feb 1: L = Jan 10, never sells again -> churned.
    # a at Mar 1: L = Feb 25, no further sale -> churned.
    assert out["last_sale_date"].to_list() == [
        date(2018, 1, 5),
        date(2018, 1, 10),
        date(2018, 2, 25),
    ]
    assert out["churned"].to_list() == [1, 1, 1]
    # With a 60-day horizon, a's Feb 25 sale is within Jan 5 + 60.
    longer = churn_labels(orders, items, spine, horizon_days=60).sort("reference_date", "seller_id")
    assert longer["churned"].to_list() == [0, 1, 1]


def test_seller_without_earlier_sale_gets_no_label_and_bad_spine_errors():
    rows = [("late", D, "delivered"), FAR]
    out = _label(rows, [(D, "late")])
    assert out["late"]["churned"] is None
    assert out["late"]["label_mature"] is False
    orders, items = _sales(rows)
    with pytest.raises(ValueError, match="duplicate"):
        churn_labels(
            orders, items, pl.DataFrame({"reference_date": [D, D], "seller_id": ["a", "a"]})
        )
    with pytest.raises(ValueError, match="seller_id"):
        churn_labels(orders, items, pl.DataFrame({"reference_date": [D]}))
