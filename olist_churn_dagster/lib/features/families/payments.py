"""The payments feature family: how the window's sold orders were paid."""

from __future__ import annotations

from olist_churn_dagster.lib.features.engine import Additive, Cte, FamilyPlan, micro, ratio
from olist_churn_dagster.lib.ingest.schema import PAYMENT_TYPES

from .common import FLOAT, INT, PURCHASE_DAY, WINDOW, Row, extremes, family_plan, money


def payments_plan(w: int) -> FamilyPlan:
    """How the window's sold orders were paid.

    Allocation: an order's payments are shared among its sellers in proportion to each
    seller's part of the order's item prices (equally when the order's prices sum to 0),
    so a multi-seller order's payment value adds up to the payment over its sellers.
    Counts (payments, per type, installments) are not allocated: a payment of a shared
    order counts once for each seller.

    Point-in-time rule: payments have no timestamp of their own and are taken as they
    stand; they count at D with their sold order, from the day after its purchase.
    """
    # What the SQL below reads of the raw tables (order items' also through sale_items).
    payment = ("payment_type", "payment_installments", "payment_value")
    columns = {
        "order_items": ("order_id", "seller_id", "price"),
        "order_payments": ("order_id", *payment),
    }
    # The seller's part of a payment: its share of the order's item value (equal parts
    # among the order's sellers when the order has no value).
    seller_share_of_payment = (
        "pm.payment_value * CASE WHEN ot.order_total_micro > 0 "
        "THEN so.seller_part_micro / ot.order_total_micro ELSE 1.0 / ot.n_sellers END"
    )
    ctes = (
        Cte(
            "sold_orders",
            f"""SELECT seller_id, order_id, min({PURCHASE_DAY}) AS purchase_day,
       CAST(sum({micro("price")}) AS BIGINT) AS seller_part_micro
FROM sale_items GROUP BY seller_id, order_id""",
        ),
        Cte(
            "order_totals",
            f"""SELECT order_id, CAST(sum({micro("price")}) AS BIGINT) AS order_total_micro,
       count(DISTINCT seller_id) AS n_sellers
FROM order_items GROUP BY order_id""",
        ),
        Cte(
            "seller_payments",
            f"""SELECT so.seller_id, so.order_id, so.purchase_day, pm.payment_type AS pay_type,
       pm.payment_installments AS installment_count,
       {micro(seller_share_of_payment)} AS value_micro
FROM sold_orders so JOIN order_totals ot ON ot.order_id = so.order_id
JOIN order_payments pm ON pm.order_id = so.order_id""",
            reads=("sold_orders", "order_totals"),
        ),
        Cte(
            "paid_orders",
            """SELECT seller_id, order_id, min(purchase_day) AS purchase_day,
       max(installment_count) > 1 AS has_installments
FROM seller_payments GROUP BY ALL""",
            reads=("seller_payments",),
        ),
    )
    per_type: dict[str, str] = {}
    for t in PAYMENT_TYPES:
        per_type[f"n_{t}"] = f"pay_type = '{t}'"
        per_type[f"v_{t}"] = f"CASE WHEN pay_type = '{t}' THEN value_micro ELSE 0 END"
    end = f"purchase_day + {w}"
    additive = (
        Additive(source="sold_orders", start="purchase_day + 1", end=end, measures={"n": "1"}),
        Additive(
            source="seller_payments",
            start="purchase_day + 1",
            end=end,
            measures={
                "n_pay": "1",
                "value": "coalesce(value_micro, 0)",
                "n_k": "installment_count IS NOT NULL",
                "k_sum": "coalesce(installment_count, 0)",
                **per_type,
            },
        ),
        Additive(
            source="paid_orders",
            start="purchase_day + 1",
            end=end,
            measures={"has_installments": "coalesce(has_installments, FALSE)"},
        ),
    )
    sliding = (extremes("seller_payments", "installment_count", measure="k"),)
    rows: list[Row] = [
        ("payments_count", INT, "n_pay", "payments of the window's orders", WINDOW, "payments"),
        (
            "payments_value",
            FLOAT,
            money("value"),
            "payment value allocated to the seller",
            WINDOW,
            "BRL",
        ),
    ]
    for t in PAYMENT_TYPES:
        rows += [
            (f"payments_{t}_count", INT, f"n_{t}", f"{t} payments", WINDOW, "payments"),
            (
                f"payments_{t}_value",
                FLOAT,
                money(f"v_{t}"),
                f"{t} payment value allocated to the seller",
                WINDOW,
                "BRL",
            ),
            (
                f"payments_{t}_value_share",
                FLOAT,
                ratio(f"v_{t}", "value"),
                f"share of payment value paid by {t}",
                WINDOW,
                "share",
            ),
        ]
    rows += [
        (
            "payments_installments_mean",
            FLOAT,
            ratio("k_sum", "n_k"),
            "mean installments per payment",
            WINDOW,
            "installments",
        ),
        (
            "payments_installments_min",
            INT,
            "k_min",
            "fewest installments of a payment",
            WINDOW,
            "installments",
        ),
        (
            "payments_installments_max",
            INT,
            "k_max",
            "most installments of a payment",
            WINDOW,
            "installments",
        ),
        (
            "payments_share_orders_installments",
            FLOAT,
            ratio("has_installments", "n"),
            "share of orders with a payment in more than one installment",
            WINDOW,
            "share",
        ),
    ]
    return family_plan("payments", columns, ctes, additive, rows, sliding=sliding)
