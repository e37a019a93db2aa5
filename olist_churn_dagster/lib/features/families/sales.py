"""The sales feature family: volume, value, regularity and lifetime of the seller's sales."""

from __future__ import annotations

from olist_churn_dagster.lib.features.engine import (
    Additive,
    Cte,
    FamilyPlan,
    distinct_runs,
    micro,
    ratio,
)

from .common import (
    AT_D,
    FLOAT,
    INT,
    LAST_30,
    LIFETIME,
    PURCHASE_DAY,
    WINDOW,
    Row,
    extremes,
    family_plan,
    money,
)


def sales_plan(w: int) -> FamilyPlan:
    """Volume, value, regularity and lifetime of the seller's sales.

    Point-in-time rule: a sold order (not canceled nor unavailable, as it stands) counts at D
    from the day after its purchase, for W days (30 for the `30d` features, for ever for
    the lifetime ones); nothing stamped after the purchase is used.
    """
    # What the SQL below reads of the raw tables (through sale_items).
    columns = {"order_items": ("product_id", "price")}
    ctes = (
        Cte(
            "sale_lines",
            f"""SELECT seller_id, order_id, product_id, {PURCHASE_DAY} AS purchase_day,
       ({PURCHASE_DAY} + 3) // 7 AS week_number, {micro("price")} AS price_micro
FROM sale_items""",
        ),
        Cte(
            "sale_orders",
            """SELECT seller_id, order_id, min(purchase_day) AS purchase_day, count(*) AS n_items,
       CAST(sum(price_micro) AS BIGINT) AS order_value_micro
FROM sale_lines GROUP BY seller_id, order_id""",
            reads=("sale_lines",),
        ),
        Cte(
            "gaps",
            """SELECT seller_id, d, lag(d) OVER (PARTITION BY seller_id ORDER BY d) AS previous_day
FROM sale_days""",
            reads=("sale_days",),
        ),
        distinct_runs("prod_runs", "sale_lines", "product_id", "purchase_day"),
        distinct_runs("week_runs", "sale_lines", "week_number", "purchase_day"),
    )
    window_end = f"least(nd, d + {w})"
    additive = (
        Additive(
            source="sale_orders",
            start="purchase_day + 1",
            end=f"purchase_day + {w}",
            measures={"n": "1", "items": "n_items", "revenue_micro": "order_value_micro"},
        ),
        Additive(
            source="sale_orders",
            start="purchase_day + 1",
            end="purchase_day + 30",
            measures={"n30": "1", "revenue_30_micro": "order_value_micro"},
        ),
        Additive(
            source="sale_orders",
            start="purchase_day + 1",
            end=None,
            measures={"n_life": "1", "revenue_life_micro": "order_value_micro"},
        ),
        Additive(source="sale_days", start="d + 1", end=f"d + {w}", measures={"days": "1"}),
        Additive(
            source="gaps",
            start="d + 1",
            end=f"previous_day + {w}",
            measures={
                "n_gaps": "1",
                "gap_sum": "d - previous_day",
                "gap_sq": "(d - previous_day) * (d - previous_day)",
            },
            where="previous_day IS NOT NULL",
        ),
        Additive(source="prod_runs", start="d + 1", end=window_end, measures={"products": "1"}),
        Additive(source="week_runs", start="d + 1", end=window_end, measures={"weeks": "1"}),
    )
    sliding = (
        extremes("sale_orders", "order_value_micro", measure="order_value"),
        extremes("sale_lines", "price_micro", measure="item_price"),
    )
    # n30 / ((n - n30) / ((w - 30) / 30)), written with one division of exact integers
    trend = ratio(f"n30 * {w - 30}", "(n - n30) * 30") if w > 30 else "NULL"
    std_gap = (
        "CASE WHEN n_gaps >= 2 THEN sqrt("
        f"{ratio('n_gaps * gap_sq - gap_sum * gap_sum', 'n_gaps * (n_gaps - 1)')}) END"
    )
    weeks_spanned = f"(D - 1 + 3) // 7 - (greatest(D - {w}, first_d) + 3) // 7 + 1"
    rows: list[Row] = [
        ("sales_orders", INT, "n", "orders with a sale", WINDOW, "orders"),
        ("sales_active_days", INT, "days", "distinct days with a sale", WINDOW, "days"),
        ("sales_items", INT, "items", "order items sold", WINDOW, "items"),
        ("sales_distinct_products", INT, "products", "distinct products sold", WINDOW, "products"),
        ("sales_recency_days", INT, "D - last_d", "days since the last sale day", AT_D, "days"),
        ("sales_revenue", FLOAT, money("revenue_micro"), "sum of item prices sold", WINDOW, "BRL"),
        (
            "sales_avg_ticket",
            FLOAT,
            f"{ratio('revenue_micro', 'n')} / 1e6",
            "revenue per order",
            WINDOW,
            "BRL",
        ),
        (
            "sales_order_value_min",
            FLOAT,
            money("order_value_min"),
            "smallest seller's part of an order (sum of its item prices)",
            WINDOW,
            "BRL",
        ),
        (
            "sales_order_value_max",
            FLOAT,
            money("order_value_max"),
            "largest seller's part of an order (sum of its item prices)",
            WINDOW,
            "BRL",
        ),
        (
            "sales_item_price_mean",
            FLOAT,
            f"{ratio('revenue_micro', 'items')} / 1e6",
            "mean item price",
            WINDOW,
            "BRL",
        ),
        (
            "sales_item_price_min",
            FLOAT,
            money("item_price_min"),
            "lowest item price",
            WINDOW,
            "BRL",
        ),
        (
            "sales_item_price_max",
            FLOAT,
            money("item_price_max"),
            "highest item price",
            WINDOW,
            "BRL",
        ),
        (
            "sales_lifetime_revenue",
            FLOAT,
            money("revenue_life_micro"),
            "revenue of all sales before D",
            LIFETIME,
            "BRL",
        ),
        ("sales_lifetime_orders", INT, "n_life", "orders with a sale before D", LIFETIME, "orders"),
        (
            "sales_tenure_days",
            INT,
            "D - first_d",
            "days since the first sale ever",
            LIFETIME,
            "days",
        ),
        (
            "sales_mean_gap_days",
            FLOAT,
            ratio("gap_sum", "n_gaps"),
            "mean gap between consecutive sale days (null with fewer than 2 sale days)",
            WINDOW,
            "days",
        ),
        (
            "sales_std_gap_days",
            FLOAT,
            std_gap,
            "sample standard deviation of the gaps between sale days (null below 2 gaps)",
            WINDOW,
            "days",
        ),
        ("sales_orders_30d", INT, "n30", "orders with a sale", LAST_30, "orders"),
        (
            "sales_revenue_30d",
            FLOAT,
            money("revenue_30_micro"),
            "sum of item prices sold",
            LAST_30,
            "BRL",
        ),
        (
            "sales_trend_30d",
            FLOAT,
            trend,
            "orders of the last 30 days over the monthly (30-day) average of the rest of the "
            "window; 1 = steady, < 1 = slowing (null when the base is 0)",
            WINDOW,
            "ratio",
        ),
        (
            "sales_week_share",
            FLOAT,
            ratio("weeks", weeks_spanned),
            "share of calendar weeks (Monday-Sunday) with a sale, among the weeks of the "
            "window since the first sale",
            WINDOW,
            "share",
        ),
    ]
    return family_plan("sales", columns, ctes, additive, rows, sliding=sliding)
