"""The delivery feature family: logistics of all the seller's orders of the window."""

from __future__ import annotations

from olist_churn_dagster.lib.features.engine import (
    Additive,
    Cte,
    FamilyPlan,
    day,
    known,
    micro,
    ratio,
)
from olist_churn_dagster.lib.ingest.schema import NON_SALE_STATUSES

from .common import (
    AT_D,
    FLOAT,
    INT,
    LAST_30,
    WINDOW,
    Row,
    extremes,
    family_plan,
    mean_days,
    money,
    sql_list,
)


def delivery_plan(w: int) -> FamilyPlan:
    """Logistics of ALL the seller's orders of the window, canceled and unavailable included.

    Point-in-time rule: an order counts as delivered at D when its customer
    delivery timestamp is before D, whatever its current status (so a `delivered` order
    delivered on or after D is undelivered at D, as after the snapshot's roll-back);
    approval and carrier facts likewise come from their timestamps. Canceled and
    unavailable have no timestamp and are taken as they stand; they are left out of the
    "still undelivered" orders, which are never going to arrive.
    """
    # What the SQL below reads of the raw tables.
    stamps = (
        "order_purchase_timestamp",
        "order_approved_at",
        "order_delivered_carrier_date",
        "order_delivered_customer_date",
        "order_estimated_delivery_date",
    )
    columns = {
        "orders": ("order_id", "order_status", *stamps),
        "order_items": ("order_id", "seller_id", "freight_value", "shipping_limit_date"),
    }
    non_sale = sql_list(NON_SALE_STATUSES)
    # One row per (seller, order): the order's timestamps in epoch ms, and for each the
    # first reference day at which it is known (`known`: stamped strictly before D).
    ctes = (
        Cte(
            "order_freight",
            f"""SELECT seller_id, order_id,
       CAST(sum({micro("freight_value")}) AS BIGINT) AS freight_micro,
       max(shipping_limit_date) AS ship_limit
FROM order_items GROUP BY seller_id, order_id""",
        ),
        Cte(
            "seller_orders",
            f"""SELECT f.seller_id, f.freight_micro,
       {day("o.order_purchase_timestamp")} AS purchase_day,
       o.order_status AS status, o.order_status NOT IN ({non_sale}) AS is_sale,
       epoch_ms(o.order_purchase_timestamp) AS purchased_at_ms,
       epoch_ms(o.order_approved_at) AS approved_at_ms,
       epoch_ms(o.order_delivered_carrier_date) AS carrier_at_ms,
       epoch_ms(o.order_delivered_customer_date) AS delivered_at_ms,
       epoch_ms(o.order_estimated_delivery_date) AS estimated_at_ms,
       epoch_ms(f.ship_limit) AS ship_limit_ms,
       {known("o.order_approved_at")} AS known_approved_day,
       {known("o.order_delivered_carrier_date")} AS known_carrier_day,
       {known("o.order_delivered_customer_date")} AS known_delivered_day,
       {known("o.order_estimated_delivery_date")} AS known_estimated_day
FROM order_freight f JOIN orders o ON o.order_id = f.order_id""",
            reads=("order_freight",),
        ),
    )
    end = f"purchase_day + {w}"
    delivered = "greatest(purchase_day + 1, known_delivered_day)"
    additive = (
        Additive(
            source="seller_orders",
            start="purchase_day + 1",
            end=end,
            measures={
                "n": "1",
                "canceled": "status = 'canceled'",
                "unavailable": "status = 'unavailable'",
                "freight": "freight_micro",
            },
        ),
        Additive(
            source="seller_orders",
            start=delivered,
            end=end,
            measures={
                "delivered": "1",
                "promised": "estimated_at_ms IS NOT NULL",
                "late": "coalesce(delivered_at_ms > estimated_at_ms, FALSE)",
                "ahead_ms": "coalesce(estimated_at_ms - delivered_at_ms, 0)",
                "purchase_to_delivery_ms": "delivered_at_ms - purchased_at_ms",
            },
            where="delivered_at_ms IS NOT NULL",
        ),
        Additive(
            source="seller_orders",
            start=f"greatest({delivered}, known_approved_day)",
            end=end,
            measures={
                "approved_delivered": "1",
                "approval_to_delivery_ms": "delivered_at_ms - approved_at_ms",
            },
            where="delivered_at_ms IS NOT NULL AND approved_at_ms IS NOT NULL",
        ),
        Additive(
            source="seller_orders",
            start="greatest(purchase_day + 1, known_carrier_day)",
            end=end,
            measures={
                "handed": "1",
                "handle_ms": "carrier_at_ms - purchased_at_ms",
                "limited": "ship_limit_ms IS NOT NULL",
                "late_hand": "coalesce(carrier_at_ms > ship_limit_ms, FALSE)",
            },
            where="carrier_at_ms IS NOT NULL",
        ),
        # Still undelivered at D: from purchase until the day before delivery is known.
        Additive(
            source="seller_orders",
            start="purchase_day + 1",
            end=f"least({end}, known_delivered_day - 1)",
            measures={"open": "1"},
            where="is_sale",
        ),
        Additive(
            source="seller_orders",
            start="greatest(purchase_day + 1, known_estimated_day)",
            end=f"least({end}, known_delivered_day - 1)",
            measures={"overdue": "1"},
            where="is_sale AND estimated_at_ms IS NOT NULL",
        ),
        Additive(
            source="seller_orders",
            start=delivered,
            end=f"least({end}, known_delivered_day + 29)",
            measures={
                "delivered30": "estimated_at_ms IS NOT NULL",
                "late30": "coalesce(delivered_at_ms > estimated_at_ms, FALSE)",
            },
            where="delivered_at_ms IS NOT NULL",
        ),
    )
    sliding = (extremes("seller_orders", "freight_micro", measure="freight"),)
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
            money("freight_min"),
            "lowest seller's freight per order",
            WINDOW,
            "BRL",
        ),
        (
            "delivery_freight_max",
            FLOAT,
            money("freight_max"),
            "highest seller's freight per order",
            WINDOW,
            "BRL",
        ),
        (
            "delivery_approval_to_delivery_days",
            FLOAT,
            mean_days("approval_to_delivery_ms", "approved_delivered"),
            "mean days from payment approval to customer delivery (delivered before D)",
            WINDOW,
            "days",
        ),
        (
            "delivery_purchase_to_delivery_days",
            FLOAT,
            mean_days("purchase_to_delivery_ms", "delivered"),
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
    return family_plan("delivery", columns, ctes, additive, rows, sliding=sliding)
