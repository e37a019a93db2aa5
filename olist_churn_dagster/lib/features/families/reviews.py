"""The reviews feature family: reviews of the seller's sold orders of the window."""

from __future__ import annotations

from olist_churn_dagster.lib.features.engine import Additive, Cte, FamilyPlan, known, ratio

from .common import FLOAT, INT, LAST_30, PURCHASE_DAY, WINDOW, Row, family_plan


def reviews_plan(w: int) -> FamilyPlan:
    """Reviews of the seller's sold orders of the window that were created before D.

    Every review row of an order counts (an order can have several); a review of a
    multi-seller order counts for each of its sellers.

    Point-in-time rule: an order of the window counts at D from the day after its
    purchase; its review from the first D after the review's creation date
    (`known_review_day`), so a review written on or after D is not there yet.
    """
    # What the SQL below reads of the raw tables (besides sale_items' keys).
    review = ("review_score", "review_creation_date")
    comment = ("review_comment_title", "review_comment_message")
    columns = {"order_reviews": ("order_id", *review, *comment)}
    ctes = (
        Cte(
            "sold_orders",
            f"SELECT DISTINCT seller_id, order_id, {PURCHASE_DAY} AS purchase_day FROM sale_items",
        ),
        Cte(
            "sale_reviews",
            f"""SELECT so.seller_id, so.order_id, so.purchase_day, r.review_score AS score,
       {known("r.review_creation_date")} AS known_review_day,
       (r.review_comment_title IS NOT NULL OR r.review_comment_message IS NOT NULL) AS commented
FROM sold_orders so JOIN order_reviews r ON r.order_id = so.order_id
WHERE r.review_score IS NOT NULL AND r.review_creation_date IS NOT NULL""",
            reads=("sold_orders",),
        ),
        Cte(
            "reviewed_orders",
            """SELECT seller_id, order_id, min(purchase_day) AS purchase_day,
       min(known_review_day) AS known_review_day
FROM sale_reviews GROUP BY seller_id, order_id""",
            reads=("sale_reviews",),
        ),
    )
    counts = {
        "n_rev": "1",
        "score_sum": "score",
        "low": "score <= 2",
        "commented": "commented",
        **{f"s{s}": f"score = {s}" for s in range(1, 6)},
    }
    additive = (
        Additive(
            source="sold_orders",
            start="purchase_day + 1",
            end=f"purchase_day + {w}",
            measures={"n": "1"},
        ),
        Additive(
            source="sale_reviews",
            start="greatest(purchase_day + 1, known_review_day)",
            end=f"purchase_day + {w}",
            measures=counts,
        ),
        Additive(
            source="sale_reviews",
            start="greatest(purchase_day + 1, known_review_day)",
            end=f"least(purchase_day + {w}, known_review_day + 29)",
            measures={"n_rev30": "1", "score30": "score"},
        ),
        Additive(
            source="reviewed_orders",
            start="greatest(purchase_day + 1, known_review_day)",
            end=f"purchase_day + {w}",
            measures={"reviewed": "1"},
        ),
    )
    smin = "CASE " + " ".join(f"WHEN s{s} > 0 THEN {s}" for s in range(1, 6)) + " END"
    smax = "CASE " + " ".join(f"WHEN s{s} > 0 THEN {s}" for s in range(5, 0, -1)) + " END"
    rows: list[Row] = [
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
    return family_plan("reviews", columns, ctes, additive, rows)
