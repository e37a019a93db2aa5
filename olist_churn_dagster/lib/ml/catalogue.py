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
    "mixed": "no single direction: which values raise the risk depends on the other "
    "features, or the model gives the feature no weight",
}
_WORDS = {"higher": "a higher value", "lower": "a lower value", "mixed": "mixed"}
# The directions the model learned, all else equal (the silence so far included: the same
# silence says more of a seller who sells often, so some of its volumes raise the risk):
# each feature's TreeSHAP contribution rising (or falling) with its value in six models
# trained on `make run`'s data (three spans, two seeds), at least half of them using the
# feature and none disagreeing (`bench/ranking.py --directions`); every other is mixed.
_HIGHER = """sales_recency_days sales_std_gap_days sales_active_days sales_lifetime_orders
reviews_count reviews_share_orders_reviewed customers_distinct_states delivery_late_share
delivery_late_share_30d delivery_overdue_share delivery_handling_days
delivery_purchase_to_delivery_days delivery_approval_to_delivery_days delivery_freight_min
payments_count payments_value payments_credit_card_count payments_voucher_value
rhythm_recency_over_gap rhythm_recency_z rhythm_p_no_sale_left_30d"""
_LOWER = """sales_distinct_products sales_item_price_max sales_revenue_30d sales_trend_30d
reviews_score_mean reviews_score_min delivery_days_ahead_of_promise delivery_open_orders
products_distinct products_distinct_categories products_volume_max
rhythm_orders_30d_vs_window"""
# A share of one state, category or payment type: which ones go with churn is the data's,
# not the feature's, so these stay mixed whatever the models learned.
_IDENTITY = ("customers_share_state_", "products_share_")


def _direction(name: str) -> str:
    if name.startswith(_IDENTITY) or name.endswith("_value_share"):
        return "mixed"
    return "higher" if name in _HIGHER.split() else "lower" if name in _LOWER.split() else "mixed"


RISK_DIRECTION: dict[str, str] = {name: _direction(name) for name in SPECS}

# Reasons as sentences: `{value}` is the reason's value, `{name}` another feature of the
# seller's row, each written in its unit (`lib.ml.scoring`; `{value:percent}` as a
# percentage whatever the unit). A reason another one's sentence already tells (the days
# without a sale in "no sale for 31 days, about 10.3 times ...") is not repeated; other
# features read "meaning: value".
REASON_TEMPLATES: Mapping[str, str] = {
    "sales_recency_days": "no sale for {value} days",
    "rhythm_recency_over_gap": "no sale for {sales_recency_days} days, about {value} times "
    "this seller's usual gap of {sales_mean_gap_days} days",
    "rhythm_recency_z": "a silence {value} standard deviations longer than this seller's "
    "usual gap between sales ({sales_mean_gap_days} ± {sales_std_gap_days} days)",
    "rhythm_p_no_sale_left": "at its usual pace of sale days, {value} chance of no new "
    "sale before it counts as churned",
    "rhythm_p_no_sale_left_30d": "at its pace of the last 30 days, {value} chance of no new "
    "sale before it counts as churned",
    "rhythm_orders_30d_vs_window": "orders in the last 30 days: {sales_orders_30d}, "
    "{value:percent} of its usual pace",
    "rhythm_active_day_rate": "sales on {value} of its days in the window",
    "sales_trend_30d": "orders in the last 30 days: {sales_orders_30d}, {value:percent} of "
    "its 30-day average before",
    "sales_mean_gap_days": "usually {value} days between sale days",
    "sales_std_gap_days": "its gaps between sale days vary by ± {value} days",
    "sales_distinct_products": "distinct products sold in the window: {value}",
    "sales_tenure_days": "first sale {value} days ago",
    "sales_week_share": "sales in {value} of the weeks since its first sale in the window",
    "reviews_score_mean": "mean review score {value} of 5",
    "reviews_share_low_score": "{value} of its reviews score 1 or 2",
    "delivery_late_share": "{value} of its delivered orders arrived late",
    "delivery_late_share_30d": "{value} of its orders delivered in the last 30 days arrived late",
    "delivery_cancel_share": "{value} of its orders canceled",
}
_NO_RHYTHM = "too few sale days in the window to know its usual gap between sales"
# Reasons whose value is missing, where the missing value is what the model reads.
MISSING_REASONS: Mapping[str, str] = {
    "sales_mean_gap_days": _NO_RHYTHM,
    "sales_std_gap_days": _NO_RHYTHM,
    "rhythm_recency_over_gap": _NO_RHYTHM,
    "rhythm_recency_z": "too few sale days in the window, or all its gaps between sales "
    "equal, to measure its silence against",
    "sales_trend_30d": "no orders in the window before the last 30 days",
    "delivery_late_share": "no order delivered in the window yet",
    "delivery_late_share_30d": "no order delivered in the last 30 days",
    "reviews_score_mean": "no review in the window",
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
