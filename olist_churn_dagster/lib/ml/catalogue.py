"""The model's feature catalogue: every feature the model reads (the feature tables' and
the rhythm features derived from them) with its meaning, unit and the direction that
raises the churn risk, and the sentences that reasons are written in.

Why here and not beside each family's SQL: the direction and the sentence speak of churn,
the model's question, and the rhythm features are the model's own; a family's code (and
the version that marks its tables stale) stays about how its columns are computed.
`docs/features.md` is generated from `catalogue_markdown` (`olist-churn catalogue`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from olist_churn_dagster.lib.features import FEATURE_CATALOGUE, FeatureSpec
from olist_churn_dagster.lib.ml.rhythm import RHYTHM_CATALOGUE
from olist_churn_dagster.lib.tables import feature_table

MODEL_CATALOGUE: tuple[FeatureSpec, ...] = FEATURE_CATALOGUE + RHYTHM_CATALOGUE
SPECS: Mapping[str, FeatureSpec] = {spec.name: spec for spec in MODEL_CATALOGUE}

# What a direction says, as docs/features.md explains it.
DIRECTIONS: Mapping[str, str] = {
    "higher": "a higher value raises the risk",
    "lower": "a lower value raises the risk",
    "mixed": "no single direction: which values raise the risk depends on the level or on "
    "the other features (the model learns it)",
}
_WORDS = {"higher": "a higher value", "lower": "a lower value", "mixed": "mixed"}
_HIGHER = """sales_recency_days sales_mean_gap_days sales_std_gap_days reviews_share_low_score
delivery_late_share delivery_cancel_share delivery_unavailable_share
delivery_approval_to_delivery_days delivery_purchase_to_delivery_days delivery_handling_days
delivery_late_to_carrier_share delivery_overdue_share delivery_late_share_30d
rhythm_recency_over_gap rhythm_recency_z rhythm_p_no_sale_left rhythm_p_no_sale_left_30d"""
_LOWER = """sales_orders sales_active_days sales_items sales_distinct_products sales_revenue
sales_avg_ticket sales_order_value_min sales_order_value_max sales_item_price_mean
sales_item_price_min sales_item_price_max sales_lifetime_revenue sales_lifetime_orders
sales_tenure_days sales_orders_30d sales_revenue_30d sales_trend_30d sales_week_share
reviews_count reviews_score_mean reviews_score_min reviews_score_max reviews_count_30d
reviews_score_trend_30d customers_distinct customers_distinct_states
delivery_days_ahead_of_promise delivery_open_orders payments_count payments_value
products_distinct products_distinct_categories
rhythm_active_day_rate rhythm_orders_30d_vs_window"""
_MIXED = """reviews_share_orders_reviewed reviews_share_with_comment customers_repeat_share
customers_orders_per_customer customers_share_same_state delivery_freight_mean
delivery_freight_min delivery_freight_max payments_installments_mean
payments_installments_min payments_installments_max payments_share_orders_installments
products_photos_mean products_volume_mean products_volume_min products_volume_max
products_weight_mean products_name_length_mean products_description_length_mean
products_share_no_category products_share_cat_other"""
# Per state, per category and per payment type: which ones go with churn is the data's.
_MIXED_PREFIXES = ("customers_share_state_", "products_share_cat_", "payments_")
_PAYMENT_VOLUME = ("_count", "_value")  # payments per type: volume, as for all payments

RISK_DIRECTION: Mapping[str, str] = {
    **{name: "mixed" for name in SPECS if name.startswith(_MIXED_PREFIXES)},
    **{
        name: "lower"
        for name in SPECS
        if name.startswith("payments_") and name.endswith(_PAYMENT_VOLUME)
    },
    **dict.fromkeys(_MIXED.split(), "mixed"),
    **dict.fromkeys(_HIGHER.split(), "higher"),
    **dict.fromkeys(_LOWER.split(), "lower"),
}

# Reasons as sentences: `{value}` is the reason's value, `{name}` another feature of the
# seller's row, each written in its unit (`lib.ml.scoring`); other features read
# "meaning: value".
REASON_TEMPLATES: Mapping[str, str] = {
    "sales_recency_days": "no sale for {value} days",
    "rhythm_recency_over_gap": "no sale for {sales_recency_days} days, about {value} times "
    "this seller's usual gap of {sales_mean_gap_days} days",
    "rhythm_recency_z": "a silence {value} standard deviations longer than this seller's "
    "usual gap between sales ({sales_mean_gap_days} ± {sales_std_gap_days} days)",
    "rhythm_p_no_sale_left": "at its usual pace of sale days, a {value} chance of no new "
    "sale before it counts as churned",
    "rhythm_p_no_sale_left_30d": "at its pace of the last 30 days, a {value} chance of no new "
    "sale before it counts as churned",
    "rhythm_orders_30d_vs_window": "orders in the last 30 days at {value} times its usual "
    "pace (now {sales_orders_30d})",
    "rhythm_active_day_rate": "sales on {value} of its days in the window",
    "sales_trend_30d": "orders in the last 30 days at {value} times its 30-day average before "
    "(now {sales_orders_30d})",
    "sales_mean_gap_days": "usually {value} days between sale days",
    "sales_tenure_days": "first sale {value} days ago",
    "sales_week_share": "sales in {value} of the weeks since its first sale in the window",
    "reviews_score_mean": "mean review score {value} of 5",
    "reviews_share_low_score": "{value} of its reviews score 1 or 2",
    "delivery_late_share": "{value} of its delivered orders arrived late",
    "delivery_cancel_share": "{value} of its orders canceled",
}


def undocumented(names: Iterable[str]) -> list[str]:
    """The names, among `names`, without a meaning, a unit and a risk direction."""
    return [
        name
        for name in names
        if not (
            name in SPECS
            and SPECS[name].meaning
            and SPECS[name].unit
            and RISK_DIRECTION.get(name) in DIRECTIONS
        )
    ]


def _source(family: str) -> str:
    if family == "rhythm":
        return "derived from the sales features in `lib/ml/rhythm.py`"
    return f"`{feature_table(family)}`"


def catalogue_markdown() -> str:
    """The catalogue as docs/features.md shows it: one table per family."""
    parts = []
    for family in dict.fromkeys(spec.family for spec in MODEL_CATALOGUE):
        parts.append(f"### {family} ({_source(family)})\n")
        parts.append("| feature | meaning | window | unit | risk rises with |")
        parts.append("|---|---|---|---|---|")
        parts += [
            f"| `{s.name}` | {s.meaning} | {s.window} | {s.unit} | "
            f"{_WORDS[RISK_DIRECTION[s.name]]} |"
            for s in MODEL_CATALOGUE
            if s.family == family
        ]
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"
