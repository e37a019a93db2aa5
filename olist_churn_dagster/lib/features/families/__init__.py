"""The six seller feature families as query plans (one module each): sources, interval
measures, outputs.

Conventions shared by every family (days are epoch day numbers, D the reference day):
* `purchase_day` is an order's purchase day; an order exists at D when purchase_day < D,
  and is in the window when D is in [purchase_day + 1, purchase_day + W] (W =
  `window_days`). `d`/`nd` are a seller's sale day and next sale day (see `engine`).
* A timestamp t is known at D when t < D, i.e. D >= `known(t)`. Timestamps at or after D
  are treated as not yet happened (null in the as-of-D snapshot).
* Order statuses are used only where they have no timestamp of their own (canceled,
  unavailable: taken as they stand at every D, as the snapshot does); delivery and carrier
  facts come from their timestamps, so the delivered/shipped roll-back needs no status.
* Money is summed in integer micro-reais (`*_micro`), durations in integer milliseconds
  (`*_ms`).
* Each family states its own point-in-time rule in its plan's docstring.
"""

from __future__ import annotations

from collections.abc import Callable

from olist_churn_dagster.lib.features.engine import FamilyPlan
from olist_churn_dagster.lib.features.families.customers import customers_plan
from olist_churn_dagster.lib.features.families.delivery import delivery_plan
from olist_churn_dagster.lib.features.families.payments import payments_plan
from olist_churn_dagster.lib.features.families.products import products_plan
from olist_churn_dagster.lib.features.families.reviews import reviews_plan
from olist_churn_dagster.lib.features.families.sales import sales_plan

PLANS: dict[str, Callable[[int], FamilyPlan]] = {
    "sales": sales_plan,
    "reviews": reviews_plan,
    "customers": customers_plan,
    "delivery": delivery_plan,
    "payments": payments_plan,
    "products": products_plan,
}
