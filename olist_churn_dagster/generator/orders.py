"""Orders of the synthetic marketplace: statuses, the delivery timeline and order items.

Everything is drawn for the order's whole life first; `roll_back` then cuts that life at
the snapshot moment, so recent orders look the way a live system shows them (shipped,
processing, ... not yet delivered).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from olist_churn_dagster.generator.distributions import HOUR_WEIGHTS
from olist_churn_dagster.generator.draws import DAY, draw, forward_fill_index
from olist_churn_dagster.generator.sellers import Sellers
from olist_churn_dagster.lib.ingest.schema import ORDER_STATUSES

DELIVERED, SHIPPED, CANCELED, UNAVAILABLE, INVOICED, PROCESSING, CREATED, APPROVED = range(8)
assert ORDER_STATUSES[CANCELED] == "canceled" and ORDER_STATUSES[APPROVED] == "approved"

# Final status shares besides delivered and the seller-specific cancel rate.
_STATUS_SHARES = {
    UNAVAILABLE: 0.0055,
    SHIPPED: 0.002,
    INVOICED: 0.001,
    PROCESSING: 0.001,
    CREATED: 0.00005,
    APPROVED: 0.00003,
}
_ITEMS_PER_ORDER = (0.9015, 0.0765, 0.013, 0.005, 0.002, 0.0015, 0.0005)
# Extra items: same product again, another product of the seller, another seller.
_EXTRA_KIND = (0.62, 0.25, 0.13)
NO_TIME = np.iinfo(np.int64).min


def purchase_seconds(rng: np.random.Generator, day: np.ndarray) -> np.ndarray:
    """Purchase moment (seconds from the span start) with a realistic hour-of-day mix."""
    hour = draw(rng, HOUR_WEIGHTS, len(day))
    return day * DAY + hour * 3600 + rng.integers(0, 3600, len(day))


def final_status(rng: np.random.Generator, cancel_p: np.ndarray) -> np.ndarray:
    """Status each order ends in once its life is over (before the snapshot cut)."""
    n = len(cancel_p)
    u = rng.random(n)
    status = np.full(n, DELIVERED, dtype=np.int8)
    status[u < cancel_p] = CANCELED
    lo = cancel_p.copy()
    for code, share in _STATUS_SHARES.items():
        status[(u >= lo) & (u < lo + share)] = code
        lo = lo + share
    return status


@dataclass(frozen=True)
class Items:
    """Order items, grouped by order and numbered 1..n within it."""

    order: np.ndarray
    item_no: np.ndarray
    seller: np.ndarray
    product_key: np.ndarray  # seller * 2**32 + index in the seller's catalogue


def _item_sellers(
    rng: np.random.Generator, order_seller: np.ndarray, n_items: np.ndarray, regular: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order index, seller and kind (0 first, 1 repeat, 2 same seller, 3 other seller)."""
    n = len(order_seller)
    order = np.repeat(np.arange(n), n_items)
    first = np.ones(len(order), dtype=bool)
    first[1:] = order[1:] != order[:-1]
    kind = np.where(first, 0, 1 + draw(rng, _EXTRA_KIND, len(order))).astype(np.int8)
    # A second seller in the order: the seller of an order placed moments before/after,
    # so the extra sale falls inside that seller's active life.
    offset = rng.choice(np.array([-2, -1, 1, 2]), len(order))
    neighbour = np.clip(order + offset, 0, n - 1)
    other = order_seller[neighbour]
    bad = (kind == 3) & ((other == order_seller[order]) | regular[other])
    kind[bad] = 2
    seller = np.where(kind == 3, other, order_seller[order])
    return order, seller, kind


def build_items(
    rng: np.random.Generator,
    order_seller: np.ndarray,
    status: np.ndarray,
    sellers: Sellers,
    catalogue_factor: float,
) -> Items:
    """Items of all orders except the unavailable ones (those never got items)."""
    n_items = 1 + draw(rng, _ITEMS_PER_ORDER, len(order_seller))
    n_items[status == UNAVAILABLE] = 0
    order, seller, kind = _item_sellers(rng, order_seller, n_items, sellers.regular)
    new_product = kind != 1
    sold = np.bincount(seller[new_product], minlength=len(sellers))
    catalogue = np.maximum(
        1, np.round(catalogue_factor * np.exp(0.45 * sellers.breadth) * sold**0.8)
    ).astype(np.int64)
    # Popular products first: a skewed pick within the seller's catalogue.
    pick = np.floor(catalogue[seller] * rng.random(len(order)) ** 1.6).astype(np.int64)
    key = seller.astype(np.int64) * (1 << 32) + pick
    source = forward_fill_index(new_product)
    starts = np.flatnonzero(np.r_[True, order[1:] != order[:-1]])
    item_no = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)])) + 1
    return Items(order=order, item_no=item_no, seller=seller[source], product_key=key[source])


@dataclass(frozen=True)
class Timeline:
    """Order timestamps in seconds from the span start; NO_TIME where missing."""

    approved: np.ndarray
    carrier: np.ndarray
    delivered: np.ndarray
    estimated: np.ndarray
    late: np.ndarray


def _approval_delay(rng: np.random.Generator, pay_type: np.ndarray) -> np.ndarray:
    """Seconds to approval: minutes for cards and vouchers, a day or more for boleto."""
    n = len(pay_type)
    card = rng.lognormal(np.log(900.0), 1.3, n).clip(60, 2 * DAY)
    boleto = (DAY * (0.6 + rng.gamma(2.0, 0.5, n))).clip(0, 4 * DAY)
    debit = rng.lognormal(np.log(1800.0), 1.2, n).clip(60, 2 * DAY)
    voucher = rng.lognormal(np.log(600.0), 1.0, n).clip(30, DAY)
    return np.choose(pay_type, [card, boleto, voucher, debit, card]).astype(np.int64)


def timeline(
    rng: np.random.Generator,
    purchase: np.ndarray,
    status: np.ndarray,
    pay_type: np.ndarray,
    transit_days: np.ndarray,
    late_p: np.ndarray,
    handling_days: np.ndarray,
) -> Timeline:
    """Full-life timestamps: purchase <= approved <= carrier <= delivered, estimate at
    00:00 some days after purchase; late deliveries land after the estimate."""
    n = len(purchase)
    approved = purchase + _approval_delay(rng, pay_type)
    est_days = np.round(handling_days + transit_days + 9.0 + rng.normal(0.0, 3.0, n))
    estimated = (purchase // DAY + est_days.clip(6, 60).astype(np.int64)) * DAY
    handling = (handling_days * rng.lognormal(0.0, 0.5, n) * DAY).astype(np.int64)
    carrier = np.maximum(np.minimum(approved + handling, estimated - DAY // 2), approved)
    late = rng.random(n) < late_p
    late_at = estimated + (DAY * (0.05 + 0.9 * rng.random(n))).astype(np.int64)
    late_at += DAY * np.floor(rng.exponential(5.0, n)).astype(np.int64)
    on_time = carrier + (transit_days * rng.lognormal(0.0, 0.45, n) * DAY).astype(np.int64)
    squeeze = carrier + ((estimated - carrier) * rng.uniform(0.4, 0.97, n)).astype(np.int64)
    on_time = np.where(on_time >= estimated - 3600, squeeze, on_time)
    delivered = np.where(late, late_at, on_time)
    _blank_by_status(rng, status, approved, carrier, delivered)
    return Timeline(approved, carrier, delivered, estimated, late & (status == DELIVERED))


def _blank_by_status(
    rng: np.random.Generator,
    status: np.ndarray,
    approved: np.ndarray,
    carrier: np.ndarray,
    delivered: np.ndarray,
) -> None:
    """Remove the timestamps an order never reached, given its final status (in place)."""
    u = rng.random((3, len(status)))
    canceled = status == CANCELED
    no_approval = (status == CREATED) | (canceled & (u[0] > 0.78))
    no_carrier = ~np.isin(status, (DELIVERED, SHIPPED)) & ~(canceled & (u[1] < 0.12))
    no_delivery = (status != DELIVERED) & ~(canceled & (u[2] < 0.08))
    no_carrier |= no_approval
    no_delivery |= no_carrier
    approved[no_approval] = NO_TIME
    carrier[no_carrier] = NO_TIME
    delivered[no_delivery] = NO_TIME


def roll_back(
    rng: np.random.Generator, status: np.ndarray, tl: Timeline, snapshot: int
) -> tuple[np.ndarray, Timeline]:
    """Cut every order's life at the snapshot moment: later timestamps vanish and
    delivered/shipped/approved-like statuses fall back to what has happened so far."""
    approved = np.where(tl.approved >= snapshot, NO_TIME, tl.approved)
    carrier = np.where(tl.carrier >= snapshot, NO_TIME, tl.carrier)
    delivered = np.where(tl.delivered >= snapshot, NO_TIME, tl.delivered)
    status = status.copy()
    moving = ~np.isin(status, (CANCELED, UNAVAILABLE))
    was_delivered = status == DELIVERED
    status[moving & was_delivered & (delivered == NO_TIME)] = SHIPPED
    waiting = rng.random(len(status)) < 0.5
    lost_ship = moving & (status == SHIPPED) & (carrier == NO_TIME)
    status[lost_ship] = np.where(waiting[lost_ship], PROCESSING, INVOICED)
    status[moving & (approved == NO_TIME)] = CREATED
    late = tl.late & (status == DELIVERED)
    return status, Timeline(approved, carrier, delivered, tl.estimated, late)
