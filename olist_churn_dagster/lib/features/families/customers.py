"""The customers feature family: reach, loyalty and geography of the window's buyers."""

from __future__ import annotations

from olist_churn_dagster.lib.features.engine import (
    Additive,
    Cte,
    FamilyPlan,
    distinct_runs,
    ratio,
)
from olist_churn_dagster.lib.ingest.schema import BRAZIL_STATES

from .common import FLOAT, INT, PURCHASE_DAY, WINDOW, Row, family_plan


def customers_plan(w: int) -> FamilyPlan:
    """Who buys: reach, loyalty and geography of the customers of the window's sales.

    Point-in-time rule: a sold order counts at D from the day after its purchase, for W
    days; the customer's identity and state, and the seller's state, have no timestamp and
    are taken as they stand (as in the snapshot).
    """
    # What the SQL below reads of the raw tables (besides sale_items' keys).
    columns = {
        "orders": ("order_id", "customer_id"),
        "customers": ("customer_id", "customer_unique_id", "customer_state"),
        "sellers": ("seller_id", "seller_state"),
    }
    uid_known, state_known = "customer_uid IS NOT NULL", "buyer_state IS NOT NULL"
    ctes = (
        Cte(
            "sold_orders",
            f"SELECT DISTINCT seller_id, order_id, {PURCHASE_DAY} AS purchase_day FROM sale_items",
        ),
        Cte(
            "customer_orders",
            """SELECT so.seller_id, so.order_id, so.purchase_day,
       c.customer_unique_id AS customer_uid, c.customer_state AS buyer_state,
       c.customer_state = sl.seller_state AS same_state
FROM sold_orders so
JOIN orders o ON o.order_id = so.order_id
LEFT JOIN customers c ON c.customer_id = o.customer_id
LEFT JOIN sellers sl ON sl.seller_id = so.seller_id""",
            reads=("sold_orders",),
        ),
        Cte(
            "cust_orders",
            """SELECT seller_id, purchase_day,
       lead(purchase_day, 1) OVER buyer AS second_purchase_day,
       lead(purchase_day, 2) OVER buyer AS third_purchase_day
FROM customer_orders WHERE customer_uid IS NOT NULL
WINDOW buyer AS (PARTITION BY seller_id, customer_uid ORDER BY purchase_day, order_id)""",
            reads=("customer_orders",),
        ),
        distinct_runs("cust_runs", "customer_orders", "customer_uid", "purchase_day", uid_known),
        distinct_runs("state_runs", "customer_orders", "buyer_state", "purchase_day", state_known),
    )
    per_state = {f"st_{s.lower()}": f"buyer_state = '{s}'" for s in BRAZIL_STATES}
    window_end = f"least(nd, d + {w})"
    additive = (
        Additive(
            source="customer_orders",
            start="purchase_day + 1",
            end=f"purchase_day + {w}",
            measures={"n": "1", "same": "coalesce(same_state, FALSE)", **per_state},
        ),
        Additive(source="cust_runs", start="d + 1", end=window_end, measures={"custs": "1"}),
        Additive(source="state_runs", start="d + 1", end=window_end, measures={"states": "1"}),
        # A customer is a repeat buyer at D while their two latest orders before D are both in
        # the window: from the day after their second order until the third, or until the
        # first of the two leaves the window.
        Additive(
            source="cust_orders",
            start="second_purchase_day + 1",
            end=f"least(third_purchase_day, purchase_day + {w})",
            measures={"repeat": "1"},
            where="second_purchase_day IS NOT NULL",
        ),
    )
    rows: list[Row] = [
        (
            "customers_distinct",
            INT,
            "custs",
            "distinct customers (customer_unique_id)",
            WINDOW,
            "customers",
        ),
        ("customers_distinct_states", INT, "states", "distinct customer states", WINDOW, "states"),
        (
            "customers_repeat_share",
            FLOAT,
            ratio("repeat", "custs"),
            "share of distinct customers with two or more orders",
            WINDOW,
            "share",
        ),
        (
            "customers_orders_per_customer",
            FLOAT,
            ratio("n", "custs"),
            "orders per distinct customer",
            WINDOW,
            "orders",
        ),
        (
            "customers_share_same_state",
            FLOAT,
            ratio("same", "n"),
            "share of orders from customers in the seller's own state",
            WINDOW,
            "share",
        ),
    ]
    rows += [
        (
            f"customers_share_state_{s.lower()}",
            FLOAT,
            ratio(f"st_{s.lower()}", "n"),
            f"share of orders from customers in {s}",
            WINDOW,
            "share",
        )
        for s in BRAZIL_STATES
    ]
    return family_plan("customers", columns, ctes, additive, rows)
