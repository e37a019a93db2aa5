"""The six seller feature families as query plans: sources, interval measures, outputs.

Conventions shared by every family (days are epoch day numbers, D the reference day):
* `p` is the purchase day; an order exists at D when p < D, and is in the window when
  p is in [D - W, D - 1], i.e. D in [p + 1, p + W] (W = `window_days`).
* A timestamp t is known at D when t < D, i.e. D >= `known(t)`. Timestamps at or after D
  are treated as not yet happened (null in the as-of-D snapshot).
* Order statuses are used only where they have no timestamp of their own (canceled,
  unavailable: taken as they stand at every D, as the snapshot does); delivery and carrier
  facts come from their timestamps, so the delivered/shipped roll-back needs no status.
* Money is summed in integer micro-reais, durations in integer milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from olist_churn_dagster.lib.features.engine import (
    MS_PER_DAY,
    Additive,
    FamilyPlan,
    FeatureSpec,
    Output,
    Sliding,
    day,
    distinct_runs,
    known,
    micro,
    ratio,
)
from olist_churn_dagster.lib.ingest.schema import BRAZIL_STATES, NON_SALE_STATUSES, PAYMENT_TYPES

# The most common product categories of the real data, fixed so that the products table has
# the same columns whatever the data; everything else is `other`.
TOP_CATEGORIES = (
    "cama_mesa_banho",
    "beleza_saude",
    "esporte_lazer",
    "moveis_decoracao",
    "informatica_acessorios",
    "utilidades_domesticas",
    "relogios_presentes",
    "telefonia",
    "ferramentas_jardim",
    "automotivo",
    "brinquedos",
    "cool_stuff",
    "perfumaria",
    "bebes",
    "eletronicos",
)

WINDOW = "window"  # the `window_days` (default 180) days before D
LAST_30 = "30d"
LIFETIME = "lifetime"
AT_D = "at D"

_Row = tuple[str, type[pl.DataType], str, str, str, str]


def _outputs(family: str, rows: list[_Row]) -> tuple[Output, ...]:
    """(name, dtype, sql, meaning, window, unit) rows -> Output objects."""
    return tuple(
        Output(FeatureSpec(family, name, meaning, window, unit), dtype, sql)
        for name, dtype, sql, meaning, window, unit in rows
    )


def _money(expr: str) -> str:
    return f"(CAST({expr} AS DOUBLE) / 1e6)"


def _mean_days(sum_ms: str, n: str) -> str:
    return f"({ratio(sum_ms, n)} / {MS_PER_DAY})"


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


FLOAT, INT = pl.Float64, pl.Int64
_PURCHASE_DAY = day("order_purchase_timestamp")


# --------------------------------------------------------------------------------- sales


def sales_plan(w: int) -> FamilyPlan:
    """Volume, value, regularity and lifetime of the seller's sales."""
    ctes = f"""si AS (
  SELECT seller_id, order_id, product_id, {_PURCHASE_DAY} AS p,
         ({_PURCHASE_DAY} + 3) // 7 AS wk, {micro("price")} AS price_u
  FROM sale_items
),
so AS (
  SELECT seller_id, order_id, min(p) AS p, count(*) AS n_items,
         CAST(sum(price_u) AS BIGINT) AS value_u
  FROM si GROUP BY seller_id, order_id
),
gaps AS (
  SELECT seller_id, d, lag(d) OVER (PARTITION BY seller_id ORDER BY d) AS q FROM sale_days
),
{distinct_runs("prod_runs", "si", "product_id", "p")},
{distinct_runs("week_runs", "si", "wk", "p")}"""
    window_end = f"least(nd, d + {w})"
    additive = (
        Additive("so", "p + 1", f"p + {w}", {"n": "1", "items": "n_items", "rev": "value_u"}),
        Additive("so", "p + 1", "p + 30", {"n30": "1", "rev30": "value_u"}),
        Additive("so", "p + 1", None, {"n_life": "1", "rev_life": "value_u"}),
        Additive("sale_days", "d + 1", f"d + {w}", {"days": "1"}),
        Additive(
            "gaps",
            "d + 1",
            f"q + {w}",
            {"n_gaps": "1", "gap_sum": "d - q", "gap_sq": "(d - q) * (d - q)"},
            where="q IS NOT NULL",
        ),
        Additive("prod_runs", "d + 1", window_end, {"products": "1"}),
        Additive("week_runs", "d + 1", window_end, {"weeks": "1"}),
    )
    sliding = (
        Sliding("so", "p", {"ov_min": ("min", "value_u"), "ov_max": ("max", "value_u")}),
        Sliding("si", "p", {"ip_min": ("min", "price_u"), "ip_max": ("max", "price_u")}),
    )
    # n30 / ((n - n30) / ((w - 30) / 30)), written with one division of exact integers
    trend = ratio(f"n30 * {w - 30}", "(n - n30) * 30") if w > 30 else "NULL"
    std_gap = (
        "CASE WHEN n_gaps >= 2 THEN sqrt("
        f"{ratio('n_gaps * gap_sq - gap_sum * gap_sum', 'n_gaps * (n_gaps - 1)')}) END"
    )
    weeks_spanned = f"(D - 1 + 3) // 7 - (greatest(D - {w}, first_d) + 3) // 7 + 1"
    rows: list[_Row] = [
        ("sales_orders", INT, "n", "orders with a sale", WINDOW, "orders"),
        ("sales_active_days", INT, "days", "distinct days with a sale", WINDOW, "days"),
        ("sales_items", INT, "items", "order items sold", WINDOW, "items"),
        ("sales_distinct_products", INT, "products", "distinct products sold", WINDOW, "products"),
        ("sales_recency_days", INT, "D - last_d", "days since the last sale day", AT_D, "days"),
        ("sales_revenue", FLOAT, _money("rev"), "sum of item prices sold", WINDOW, "BRL"),
        (
            "sales_avg_ticket",
            FLOAT,
            f"{ratio('rev', 'n')} / 1e6",
            "revenue per order",
            WINDOW,
            "BRL",
        ),
        (
            "sales_order_value_min",
            FLOAT,
            _money("ov_min"),
            "smallest seller's part of an order (sum of its item prices)",
            WINDOW,
            "BRL",
        ),
        (
            "sales_order_value_max",
            FLOAT,
            _money("ov_max"),
            "largest seller's part of an order (sum of its item prices)",
            WINDOW,
            "BRL",
        ),
        (
            "sales_item_price_mean",
            FLOAT,
            f"{ratio('rev', 'items')} / 1e6",
            "mean item price",
            WINDOW,
            "BRL",
        ),
        ("sales_item_price_min", FLOAT, _money("ip_min"), "lowest item price", WINDOW, "BRL"),
        ("sales_item_price_max", FLOAT, _money("ip_max"), "highest item price", WINDOW, "BRL"),
        (
            "sales_lifetime_revenue",
            FLOAT,
            _money("rev_life"),
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
        ("sales_revenue_30d", FLOAT, _money("rev30"), "sum of item prices sold", LAST_30, "BRL"),
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
    return FamilyPlan(("orders", "order_items"), ctes, additive, sliding, _outputs("sales", rows))


# ------------------------------------------------------------------------------- reviews


def reviews_plan(w: int) -> FamilyPlan:
    """Reviews of the seller's sold orders of the window that were created before D.

    Every review row of an order counts (an order can have several); a review of a
    multi-seller order counts for each of its sellers.
    """
    ctes = f"""so AS (SELECT DISTINCT seller_id, order_id, {_PURCHASE_DAY} AS p FROM sale_items),
rv AS (
  SELECT so.seller_id, so.order_id, so.p, r.review_score AS score,
         {known("r.review_creation_date")} AS k,
         (r.review_comment_title IS NOT NULL OR r.review_comment_message IS NOT NULL) AS commented
  FROM so JOIN order_reviews r ON r.order_id = so.order_id
  WHERE r.review_score IS NOT NULL AND r.review_creation_date IS NOT NULL
),
ro AS (SELECT seller_id, order_id, min(p) AS p, min(k) AS k FROM rv GROUP BY seller_id, order_id)"""
    counts = {
        "n_rev": "1",
        "score_sum": "score",
        "low": "score <= 2",
        "commented": "commented",
        **{f"s{s}": f"score = {s}" for s in range(1, 6)},
    }
    additive = (
        Additive("so", "p + 1", f"p + {w}", {"n": "1"}),
        Additive("rv", "greatest(p + 1, k)", f"p + {w}", counts),
        Additive(
            "rv",
            "greatest(p + 1, k)",
            f"least(p + {w}, k + 29)",
            {"n_rev30": "1", "score30": "score"},
        ),
        Additive("ro", "greatest(p + 1, k)", f"p + {w}", {"reviewed": "1"}),
    )
    smin = "CASE " + " ".join(f"WHEN s{s} > 0 THEN {s}" for s in range(1, 6)) + " END"
    smax = "CASE " + " ".join(f"WHEN s{s} > 0 THEN {s}" for s in range(5, 0, -1)) + " END"
    rows: list[_Row] = [
        ("reviews_count", INT, "n_rev", "reviews of the window's orders", WINDOW, "reviews"),
        (
            "reviews_score_mean",
            FLOAT,
            ratio("score_sum", "n_rev"),
            "mean review score",
            WINDOW,
            "1-5",
        ),
        ("reviews_score_min", INT, smin, "lowest review score", WINDOW, "1-5"),
        ("reviews_score_max", INT, smax, "highest review score", WINDOW, "1-5"),
        (
            "reviews_share_orders_reviewed",
            FLOAT,
            ratio("reviewed", "n"),
            "share of the window's orders with at least one review",
            WINDOW,
            "share",
        ),
        (
            "reviews_share_low_score",
            FLOAT,
            ratio("low", "n_rev"),
            "share of reviews scoring 1 or 2",
            WINDOW,
            "share",
        ),
        (
            "reviews_count_30d",
            INT,
            "n_rev30",
            "reviews (of the window's orders) created in the last 30 days",
            LAST_30,
            "reviews",
        ),
        (
            "reviews_score_trend_30d",
            FLOAT,
            f"{ratio('score30', 'n_rev30')} - {ratio('score_sum', 'n_rev')}",
            "mean score of reviews created in the last 30 days minus the window's mean",
            LAST_30,
            "score points",
        ),
        (
            "reviews_share_with_comment",
            FLOAT,
            ratio("commented", "n_rev"),
            "share of reviews with a comment title or message",
            WINDOW,
            "share",
        ),
    ]
    return FamilyPlan(
        ("orders", "order_items", "order_reviews"), ctes, additive, (), _outputs("reviews", rows)
    )


# ----------------------------------------------------------------------------- customers


def customers_plan(w: int) -> FamilyPlan:
    """Who buys: reach, loyalty and geography of the customers of the window's sales."""
    ctes = f"""so AS (SELECT DISTINCT seller_id, order_id, {_PURCHASE_DAY} AS p FROM sale_items),
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
            "co",
            "p + 1",
            f"p + {w}",
            {"n": "1", "same": "coalesce(same_state, FALSE)", **per_state},
        ),
        Additive("cust_runs", "d + 1", window_end, {"custs": "1"}),
        Additive("state_runs", "d + 1", window_end, {"states": "1"}),
        # A customer is a repeat buyer at D while their two latest orders before D are both in
        # the window: from the day after their second order until the third, or until the
        # first of the two leaves the window.
        Additive("cust_orders", "p1 + 1", f"least(p2, p + {w})", {"repeat": "1"}, "p1 IS NOT NULL"),
    )
    rows: list[_Row] = [
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
        ("orders", "order_items", "customers", "sellers"),
        ctes,
        additive,
        (),
        _outputs("customers", rows),
    )


# ------------------------------------------------------------------------------ delivery


def delivery_plan(w: int) -> FamilyPlan:
    """Logistics of ALL the seller's orders of the window, canceled and unavailable included.

    Point-in-time rule applied here: an order counts as delivered at D when its customer
    delivery timestamp is before D, whatever its current status (so a `delivered` order
    delivered on or after D is undelivered at D, as after the snapshot's roll-back);
    approval and carrier facts likewise come from their timestamps. Canceled and
    unavailable have no timestamp and are taken as they stand; they are left out of the
    "still undelivered" orders, which are never going to arrive.
    """
    non_sale = _sql_list(NON_SALE_STATUSES)
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
            "dv",
            "p + 1",
            end,
            {
                "n": "1",
                "canceled": "status = 'canceled'",
                "unavailable": "status = 'unavailable'",
                "freight": "freight_u",
            },
        ),
        Additive(
            "dv",
            delivered,
            end,
            {
                "delivered": "1",
                "promised": "t_e IS NOT NULL",
                "late": "coalesce(t_d > t_e, FALSE)",
                "ahead_ms": "coalesce(t_e - t_d, 0)",
                "p2d_ms": "t_d - t_p",
            },
            "t_d IS NOT NULL",
        ),
        Additive(
            "dv",
            f"greatest({delivered}, k_a)",
            end,
            {"n_a2d": "1", "a2d_ms": "t_d - t_a"},
            "t_d IS NOT NULL AND t_a IS NOT NULL",
        ),
        Additive(
            "dv",
            "greatest(p + 1, k_c)",
            end,
            {
                "handed": "1",
                "handle_ms": "t_c - t_p",
                "limited": "t_l IS NOT NULL",
                "late_hand": "coalesce(t_c > t_l, FALSE)",
            },
            "t_c IS NOT NULL",
        ),
        # Still undelivered at D: from purchase until the delivery day (known(t_d) - 1).
        Additive("dv", "p + 1", f"least({end}, k_d - 1)", {"open": "1"}, "is_sale"),
        Additive(
            "dv",
            "greatest(p + 1, k_e)",
            f"least({end}, k_d - 1)",
            {"overdue": "1"},
            "is_sale AND t_e IS NOT NULL",
        ),
        Additive(
            "dv",
            delivered,
            f"least({end}, k_d + 29)",
            {"delivered30": "t_e IS NOT NULL", "late30": "coalesce(t_d > t_e, FALSE)"},
            "t_d IS NOT NULL",
        ),
    )
    sliding = (
        Sliding("dv", "p", {"fr_min": ("min", "freight_u"), "fr_max": ("max", "freight_u")}),
    )
    rows: list[_Row] = [
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
            _money("fr_min"),
            "lowest seller's freight per order",
            WINDOW,
            "BRL",
        ),
        (
            "delivery_freight_max",
            FLOAT,
            _money("fr_max"),
            "highest seller's freight per order",
            WINDOW,
            "BRL",
        ),
        (
            "delivery_approval_to_delivery_days",
            FLOAT,
            _mean_days("a2d_ms", "n_a2d"),
            "mean days from payment approval to customer delivery (delivered before D)",
            WINDOW,
            "days",
        ),
        (
            "delivery_purchase_to_delivery_days",
            FLOAT,
            _mean_days("p2d_ms", "delivered"),
            "mean days from purchase to customer delivery (delivered before D)",
            WINDOW,
            "days",
        ),
        (
            "delivery_days_ahead_of_promise",
            FLOAT,
            _mean_days("ahead_ms", "promised"),
            "mean days between delivery and the estimated date (positive = early)",
            WINDOW,
            "days",
        ),
        (
            "delivery_handling_days",
            FLOAT,
            _mean_days("handle_ms", "handed"),
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
        ("orders", "order_items"), ctes, additive, sliding, _outputs("delivery", rows)
    )


# ------------------------------------------------------------------------------ payments


def payments_plan(w: int) -> FamilyPlan:
    """How the window's sold orders were paid.

    Allocation: an order's payments are shared among its sellers in proportion to each
    seller's part of the order's item prices (equally when the order's prices sum to 0),
    so a multi-seller order's payment value adds up to the payment over its sellers.
    Counts (payments, per type, installments) are not allocated: a payment of a shared
    order counts once for each seller.
    """
    ctes = f"""so AS (
  SELECT seller_id, order_id, min({_PURCHASE_DAY}) AS p,
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
        Additive("so", "p + 1", end, {"n": "1"}),
        Additive(
            "pay",
            "p + 1",
            end,
            {
                "n_pay": "1",
                "value": "coalesce(v_u, 0)",
                "n_k": "k IS NOT NULL",
                "k_sum": "coalesce(k, 0)",
                **per_type,
            },
        ),
        Additive("po", "p + 1", end, {"inst": "coalesce(inst, FALSE)"}),
    )
    sliding = (Sliding("pay", "p", {"k_min": ("min", "k"), "k_max": ("max", "k")}),)
    rows: list[_Row] = [
        ("payments_count", INT, "n_pay", "payments of the window's orders", WINDOW, "payments"),
        (
            "payments_value",
            FLOAT,
            _money("value"),
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
                _money(f"v_{t}"),
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
        ("orders", "order_items", "order_payments"),
        ctes,
        additive,
        sliding,
        _outputs("payments", rows),
    )


# ------------------------------------------------------------------------------ products


def products_plan(w: int) -> FamilyPlan:
    """What the seller sells: the catalogue attributes of the items sold in the window.

    Items whose product is missing from the products table count as without category.
    """
    top = _sql_list(TOP_CATEGORIES)
    ctes = f"""pi AS (
  SELECT s.seller_id, s.product_id, {day("s.order_purchase_timestamp")} AS p,
         pr.product_category_name AS cat, pr.product_photos_qty AS photos,
         pr.product_weight_g AS weight, pr.product_name_lenght AS name_len,
         pr.product_description_lenght AS desc_len,
         pr.product_length_cm * pr.product_height_cm * pr.product_width_cm AS vol
  FROM sale_items s LEFT JOIN products pr ON pr.product_id = s.product_id
),
{distinct_runs("prod_runs", "pi", "product_id", "p")},
{distinct_runs("cat_runs", "pi", "cat", "p", "cat IS NOT NULL")}"""
    measures = {"items": "1", "no_cat": "cat IS NULL"}
    for col in ("photos", "weight", "name_len", "desc_len", "vol"):
        measures[f"n_{col}"] = f"{col} IS NOT NULL"
        measures[f"sum_{col}"] = f"coalesce({col}, 0)"
    measures.update({f"c_{c}": f"coalesce(cat = '{c}', FALSE)" for c in TOP_CATEGORIES})
    measures["c_other"] = f"coalesce(cat NOT IN ({top}), FALSE)"
    window_end = f"least(nd, d + {w})"
    additive = (
        Additive("pi", "p + 1", f"p + {w}", measures),
        Additive("prod_runs", "d + 1", window_end, {"products": "1"}),
        Additive("cat_runs", "d + 1", window_end, {"cats": "1"}),
    )
    sliding = (Sliding("pi", "p", {"vol_min": ("min", "vol"), "vol_max": ("max", "vol")}),)
    rows: list[_Row] = [
        ("products_distinct", INT, "products", "distinct products sold", WINDOW, "products"),
        (
            "products_distinct_categories",
            INT,
            "cats",
            "distinct categories sold",
            WINDOW,
            "categories",
        ),
        (
            "products_photos_mean",
            FLOAT,
            ratio("sum_photos", "n_photos"),
            "mean photos per item's product",
            WINDOW,
            "photos",
        ),
        (
            "products_volume_mean",
            FLOAT,
            ratio("sum_vol", "n_vol"),
            "mean product volume (length x height x width)",
            WINDOW,
            "cm3",
        ),
        (
            "products_volume_min",
            FLOAT,
            "CAST(vol_min AS DOUBLE)",
            "smallest product volume",
            WINDOW,
            "cm3",
        ),
        (
            "products_volume_max",
            FLOAT,
            "CAST(vol_max AS DOUBLE)",
            "largest product volume",
            WINDOW,
            "cm3",
        ),
        (
            "products_weight_mean",
            FLOAT,
            ratio("sum_weight", "n_weight"),
            "mean product weight",
            WINDOW,
            "g",
        ),
        (
            "products_name_length_mean",
            FLOAT,
            ratio("sum_name_len", "n_name_len"),
            "mean product name length",
            WINDOW,
            "characters",
        ),
        (
            "products_description_length_mean",
            FLOAT,
            ratio("sum_desc_len", "n_desc_len"),
            "mean product description length",
            WINDOW,
            "characters",
        ),
        (
            "products_share_no_category",
            FLOAT,
            ratio("no_cat", "items"),
            "share of items without a category",
            WINDOW,
            "share",
        ),
    ]
    rows += [
        (
            f"products_share_cat_{c}",
            FLOAT,
            ratio(f"c_{c}", "items"),
            f"share of items in category {c}",
            WINDOW,
            "share",
        )
        for c in TOP_CATEGORIES
    ]
    rows.append(
        (
            "products_share_cat_other",
            FLOAT,
            ratio("c_other", "items"),
            "share of items in any other category",
            WINDOW,
            "share",
        )
    )
    return FamilyPlan(
        ("orders", "order_items", "products"), ctes, additive, sliding, _outputs("products", rows)
    )


PLANS: dict[str, Callable[[int], FamilyPlan]] = {
    "sales": sales_plan,
    "reviews": reviews_plan,
    "customers": customers_plan,
    "delivery": delivery_plan,
    "payments": payments_plan,
    "products": products_plan,
}
