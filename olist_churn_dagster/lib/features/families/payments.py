"""The payments feature family: how the window's sold orders were paid."""

from __future__ import annotations

from olist_churn_dagster.lib.features.engine import Additive, FamilyPlan, Sliding, micro, ratio
from olist_churn_dagster.lib.ingest.schema import PAYMENT_TYPES

from .common import FLOAT, INT, PURCHASE_DAY, WINDOW, Row, money, outputs


def payments_plan(w: int) -> FamilyPlan:
    """How the window's sold orders were paid.

    Allocation: an order's payments are shared among its sellers in proportion to each
    seller's part of the order's item prices (equally when the order's prices sum to 0),
    so a multi-seller order's payment value adds up to the payment over its sellers.
    Counts (payments, per type, installments) are not allocated: a payment of a shared
    order counts once for each seller.
    """
    ctes = f"""so AS (
  SELECT seller_id, order_id, min({PURCHASE_DAY}) AS p,
         CAST(sum({micro("price")}) AS BIGINT) AS part_u
  FROM sale_items GROUP BY seller_id, order_id
),
ot AS (
  SELECT order_id, CAST(sum({micro("price")}) AS BIGINT) AS total_u,
         count(DISTINCT seller_id) AS n_sellers
  FROM order_items GROUP BY order_id
),
pay AS (
  SELECT so.seller_id, so.order_id, so.p, y.payment_type AS ty,
         y.payment_installments AS k,
         {
        micro(
            "y.payment_value * CASE WHEN ot.total_u > 0 THEN so.part_u / ot.total_u "
            "ELSE 1.0 / ot.n_sellers END"
        )
    } AS v_u
  FROM so JOIN ot ON ot.order_id = so.order_id
  JOIN order_payments y ON y.order_id = so.order_id
),
po AS (SELECT seller_id, order_id, min(p) AS p, max(k) > 1 AS inst FROM pay GROUP BY ALL)"""
    per_type: dict[str, str] = {}
    for t in PAYMENT_TYPES:
        per_type[f"n_{t}"] = f"ty = '{t}'"
        per_type[f"v_{t}"] = f"CASE WHEN ty = '{t}' THEN v_u ELSE 0 END"
    end = f"p + {w}"
    additive = (
        Additive(source="so", start="p + 1", end=end, measures={"n": "1"}),
        Additive(
            source="pay",
            start="p + 1",
            end=end,
            measures={
                "n_pay": "1",
                "value": "coalesce(v_u, 0)",
                "n_k": "k IS NOT NULL",
                "k_sum": "coalesce(k, 0)",
                **per_type,
            },
        ),
        Additive(source="po", start="p + 1", end=end, measures={"inst": "coalesce(inst, FALSE)"}),
    )
    sliding = (
        Sliding(source="pay", day="p", aggregates={"k_min": ("min", "k"), "k_max": ("max", "k")}),
    )
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
            ratio("inst", "n"),
            "share of orders with a payment in more than one installment",
            WINDOW,
            "share",
        ),
    ]
    return FamilyPlan(
        tables=("orders", "order_items", "order_payments"),
        ctes=ctes,
        additive=additive,
        sliding=sliding,
        outputs=outputs("payments", rows),
    )
