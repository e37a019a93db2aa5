"""The customers feature family: reach, loyalty and geography of the window's buyers."""

from __future__ import annotations

from olist_churn_dagster.lib.features.engine import Additive, FamilyPlan, distinct_runs, ratio
from olist_churn_dagster.lib.ingest.schema import BRAZIL_STATES

from .common import FLOAT, INT, PURCHASE_DAY, WINDOW, Row, outputs


def customers_plan(w: int) -> FamilyPlan:
    """Who buys: reach, loyalty and geography of the customers of the window's sales."""
    ctes = f"""so AS (SELECT DISTINCT seller_id, order_id, {PURCHASE_DAY} AS p FROM sale_items),
co AS (
  SELECT so.seller_id, so.order_id, so.p, c.customer_unique_id AS u, c.customer_state AS st,
         c.customer_state = sl.seller_state AS same_state
  FROM so
  JOIN orders o ON o.order_id = so.order_id
  LEFT JOIN customers c ON c.customer_id = o.customer_id
  LEFT JOIN sellers sl ON sl.seller_id = so.seller_id
),
cust_orders AS (
  SELECT seller_id, p,
         lead(p, 1) OVER (PARTITION BY seller_id, u ORDER BY p, order_id) AS p1,
         lead(p, 2) OVER (PARTITION BY seller_id, u ORDER BY p, order_id) AS p2
  FROM co WHERE u IS NOT NULL
),
{distinct_runs("cust_runs", "co", "u", "p", "u IS NOT NULL")},
{distinct_runs("state_runs", "co", "st", "p", "st IS NOT NULL")}"""
    per_state = {f"st_{s.lower()}": f"st = '{s}'" for s in BRAZIL_STATES}
    window_end = f"least(nd, d + {w})"
    additive = (
        Additive(
            source="co",
            start="p + 1",
            end=f"p + {w}",
            measures={"n": "1", "same": "coalesce(same_state, FALSE)", **per_state},
        ),
        Additive(source="cust_runs", start="d + 1", end=window_end, measures={"custs": "1"}),
        Additive(source="state_runs", start="d + 1", end=window_end, measures={"states": "1"}),
        # A customer is a repeat buyer at D while their two latest orders before D are both in
        # the window: from the day after their second order until the third, or until the
        # first of the two leaves the window.
        Additive(
            source="cust_orders",
            start="p1 + 1",
            end=f"least(p2, p + {w})",
            measures={"repeat": "1"},
            where="p1 IS NOT NULL",
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
    return FamilyPlan(
        tables=("orders", "order_items", "customers", "sellers"),
        ctes=ctes,
        additive=additive,
        sliding=(),
        outputs=outputs("customers", rows),
    )
