"""The delivery feature family: logistics of all the seller's orders of the window."""

from __future__ import annotations

from olist_churn_dagster.lib.features.engine import (
    Additive,
    FamilyPlan,
    Sliding,
    day,
    known,
    micro,
    ratio,
)
from olist_churn_dagster.lib.ingest.schema import NON_SALE_STATUSES

from .common import AT_D, FLOAT, INT, LAST_30, WINDOW, Row, mean_days, money, outputs, sql_list


def delivery_plan(w: int) -> FamilyPlan:
    """Logistics of ALL the seller's orders of the window, canceled and unavailable included.

    Point-in-time rule applied here: an order counts as delivered at D when its customer
    delivery timestamp is before D, whatever its current status (so a `delivered` order
    delivered on or after D is undelivered at D, as after the snapshot's roll-back);
    approval and carrier facts likewise come from their timestamps. Canceled and
    unavailable have no timestamp and are taken as they stand; they are left out of the
    "still undelivered" orders, which are never going to arrive.
    """
    non_sale = sql_list(NON_SALE_STATUSES)
    ctes = f"""it AS (
  SELECT seller_id, order_id, CAST(sum({micro("freight_value")}) AS BIGINT) AS freight_u,
         max(shipping_limit_date) AS lim
  FROM order_items GROUP BY seller_id, order_id
),
dv AS (
  SELECT it.seller_id, it.freight_u, {day("o.order_purchase_timestamp")} AS p,
         o.order_status AS status, o.order_status NOT IN ({non_sale}) AS is_sale,
         epoch_ms(o.order_purchase_timestamp) AS t_p, epoch_ms(o.order_approved_at) AS t_a,
         epoch_ms(o.order_delivered_carrier_date) AS t_c,
         epoch_ms(o.order_delivered_customer_date) AS t_d,
         epoch_ms(o.order_estimated_delivery_date) AS t_e, epoch_ms(it.lim) AS t_l,
         {known("o.order_approved_at")} AS k_a, {known("o.order_delivered_carrier_date")} AS k_c,
         {known("o.order_delivered_customer_date")} AS k_d,
         {known("o.order_estimated_delivery_date")} AS k_e
  FROM it JOIN orders o ON o.order_id = it.order_id
)"""
    end = f"p + {w}"
    delivered = "greatest(p + 1, k_d)"
    additive = (
        Additive(
            source="dv",
            start="p + 1",
            end=end,
            measures={
                "n": "1",
                "canceled": "status = 'canceled'",
                "unavailable": "status = 'unavailable'",
                "freight": "freight_u",
            },
        ),
        Additive(
            source="dv",
            start=delivered,
            end=end,
            measures={
                "delivered": "1",
                "promised": "t_e IS NOT NULL",
                "late": "coalesce(t_d > t_e, FALSE)",
                "ahead_ms": "coalesce(t_e - t_d, 0)",
                "p2d_ms": "t_d - t_p",
            },
            where="t_d IS NOT NULL",
        ),
        Additive(
            source="dv",
            start=f"greatest({delivered}, k_a)",
            end=end,
            measures={"n_a2d": "1", "a2d_ms": "t_d - t_a"},
            where="t_d IS NOT NULL AND t_a IS NOT NULL",
        ),
        Additive(
            source="dv",
            start="greatest(p + 1, k_c)",
            end=end,
            measures={
                "handed": "1",
                "handle_ms": "t_c - t_p",
                "limited": "t_l IS NOT NULL",
                "late_hand": "coalesce(t_c > t_l, FALSE)",
            },
            where="t_c IS NOT NULL",
        ),
        # Still undelivered at D: from purchase until the delivery day (known(t_d) - 1).
        Additive(
            source="dv",
            start="p + 1",
            end=f"least({end}, k_d - 1)",
            measures={"open": "1"},
            where="is_sale",
        ),
        Additive(
            source="dv",
            start="greatest(p + 1, k_e)",
            end=f"least({end}, k_d - 1)",
            measures={"overdue": "1"},
            where="is_sale AND t_e IS NOT NULL",
        ),
        Additive(
            source="dv",
            start=delivered,
            end=f"least({end}, k_d + 29)",
            measures={"delivered30": "t_e IS NOT NULL", "late30": "coalesce(t_d > t_e, FALSE)"},
            where="t_d IS NOT NULL",
        ),
    )
    sliding = (
        Sliding(
            source="dv",
            day="p",
            aggregates={"fr_min": ("min", "freight_u"), "fr_max": ("max", "freight_u")},
        ),
    )
    rows: list[Row] = [
        (
            "delivery_late_share",
            FLOAT,
            ratio("late", "promised"),
            "share delivered after the estimated date, among orders delivered before D",
            WINDOW,
            "share",
        ),
        (
            "delivery_cancel_share",
            FLOAT,
            ratio("canceled", "n"),
            "share of orders canceled",
            WINDOW,
            "share",
        ),
        (
            "delivery_unavailable_share",
            FLOAT,
            ratio("unavailable", "n"),
            "share of orders unavailable (could not be fulfilled)",
            WINDOW,
            "share",
        ),
        (
            "delivery_freight_mean",
            FLOAT,
            f"{ratio('freight', 'n')} / 1e6",
            "mean seller's freight per order",
            WINDOW,
            "BRL",
        ),
        (
            "delivery_freight_min",
            FLOAT,
            money("fr_min"),
            "lowest seller's freight per order",
            WINDOW,
            "BRL",
        ),
        (
            "delivery_freight_max",
            FLOAT,
            money("fr_max"),
            "highest seller's freight per order",
            WINDOW,
            "BRL",
        ),
        (
            "delivery_approval_to_delivery_days",
            FLOAT,
            mean_days("a2d_ms", "n_a2d"),
            "mean days from payment approval to customer delivery (delivered before D)",
            WINDOW,
            "days",
        ),
        (
            "delivery_purchase_to_delivery_days",
            FLOAT,
            mean_days("p2d_ms", "delivered"),
            "mean days from purchase to customer delivery (delivered before D)",
            WINDOW,
            "days",
        ),
        (
            "delivery_days_ahead_of_promise",
            FLOAT,
            mean_days("ahead_ms", "promised"),
            "mean days between delivery and the estimated date (positive = early)",
            WINDOW,
            "days",
        ),
        (
            "delivery_handling_days",
            FLOAT,
            mean_days("handle_ms", "handed"),
            "mean days from purchase to hand-over to the carrier (handed over before D)",
            WINDOW,
            "days",
        ),
        (
            "delivery_late_to_carrier_share",
            FLOAT,
            ratio("late_hand", "limited"),
            "share handed to the carrier after the seller's shipping limit",
            WINDOW,
            "share",
        ),
        ("delivery_open_orders", INT, "open", "sold orders not yet delivered at D", AT_D, "orders"),
        (
            "delivery_overdue_share",
            FLOAT,
            ratio("overdue", "open"),
            "share of the orders still undelivered at D that are past their estimated date",
            AT_D,
            "share",
        ),
        (
            "delivery_late_share_30d",
            FLOAT,
            ratio("late30", "delivered30"),
            "late share among the window's orders delivered in the last 30 days",
            LAST_30,
            "share",
        ),
    ]
    return FamilyPlan(
        tables=("orders", "order_items"),
        ctes=ctes,
        additive=additive,
        sliding=sliding,
        outputs=outputs("delivery", rows),
    )
