"""Market demand, seller lifecycles and the (seller, day) of every synthetic order.

Churn is built in here: each seller gets observable traits (late deliveries, poor
reviews, narrow catalogue, low prices, small size) and a tenure-dependent hazard that
grows with them. When the hazard fires the seller's sales fade and then stop for good,
which is exactly what the downstream churn label must learn to anticipate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from olist_churn_dagster.generator.distributions import WEEKDAY_WEIGHTS
from olist_churn_dagster.generator.draws import draw

ORDERS_AT_SCALE_1 = 99_441
SELLERS_AT_SCALE_1 = 3_095
DEFAULT_SPAN_DAYS = 761
# Candidate sellers per seller that ends up with a sale (late entrants may never sell).
_CANDIDATES_PER_SELLER = 1.72
_REGULAR_SHARE = 0.04  # sellers who sell rarely but like clockwork and never churn
_NO_EXIT = 1 << 30
_CHUNK = 4096


@dataclass(frozen=True)
class Dynamics:
    """What drives a seller's exit and how visibly it comes (weights of the log-hazard).

    The default makes size, reviews and catalogue matter and lets sales fade for 25-120
    days before the exit, so the silence so far (recency) says much. Other presets change
    that on purpose, to check that a model's gain is not tuned to one data generator.
    """

    late: float = 5.0  # weight of the late-delivery probability
    review: float = 3.0  # weight of the poor-review mix
    breadth: float = 0.35  # wider catalogues churn less
    price: float = 0.45  # pricier sellers churn less
    size: float = 0.25  # bigger sellers churn less
    decline_min: int = 25  # days of fading sales before the exit: from ...
    decline_max: int = 120  # ... to (exclusive)
    fade_late: float = 1.8  # late-delivery multiplier while the seller fades


DYNAMICS = {
    "default": Dynamics(),
    # Delivery trouble drives churn; exits come abruptly (a short fade), so recency warns
    # late and the service history has to carry the prediction.
    "delivery": Dynamics(
        late=12.0,
        review=5.0,
        breadth=0.15,
        price=0.2,
        size=0.1,
        decline_min=5,
        decline_max=30,
        fade_late=3.0,
    ),
}


@dataclass(frozen=True)
class Shift:
    """A change of seller dynamics on a date, for checking that monitoring sees one: the
    market's demand becomes `demand` times what it was (every seller sells less), and
    every seller still in business (or entering later) exits `hazard` times sooner: its
    remaining life is divided by `hazard`, as a constant hazard that many times higher
    would make it."""

    on: date
    demand: float = 0.35
    hazard: float = 1.0


@dataclass(frozen=True)
class Sellers:
    """Per-seller traits (arrays of equal length) that drive sales, service and churn."""

    entry: np.ndarray  # first day the seller can sell (day index from the span start)
    exit: np.ndarray  # first day without sales for good (_NO_EXIT if never)
    size: np.ndarray  # relative sales rate
    late_p: np.ndarray  # probability a delivery is late
    bad_review: np.ndarray  # weight of the poor-review score mix
    breadth: np.ndarray  # catalogue breadth factor (standard normal)
    log_price: np.ndarray  # log of the seller's typical item price (BRL)
    cancel_p: np.ndarray  # probability an order gets canceled
    handling_days: np.ndarray  # median days from approval to carrier
    decline_days: np.ndarray  # length of the sales fade before exit
    regular: np.ndarray  # bool: rare-but-regular seller

    def __len__(self) -> int:
        return len(self.entry)


def _level(t: np.ndarray) -> np.ndarray:
    """Marketplace size by day: strong logistic growth in year one, mild after."""
    growth = 0.1 + 0.9 / (1.0 + np.exp(-(t - 170.0) / 50.0))
    return growth * (1.0 + 0.06 * np.clip((t - 365.0) / 365.0, 0.0, 1.0))


def _black_friday(year: int) -> date:
    """The Friday after the fourth Thursday of November."""
    first = date(year, 11, 1)
    thursday = first + timedelta(days=(3 - first.weekday()) % 7 + 21)
    return thursday + timedelta(days=1)


def _holiday_factor(start: date, n_days: int) -> np.ndarray:
    """Black Friday peak (with its week around it) and the year-end lull."""
    factor = np.ones(n_days)
    bf_shape = {-3: 1.15, -2: 1.2, -1: 1.35, 0: 4.0, 1: 2.0, 2: 1.5, 3: 1.7, 4: 1.3}
    end = start + timedelta(days=n_days - 1)
    for year in range(start.year, end.year + 1):
        bf = (_black_friday(year) - start).days
        for offset, mult in bf_shape.items():
            if 0 <= bf + offset < n_days:
                factor[bf + offset] = mult
        lull = (date(year, 12, 22) - start).days
        lo, hi = max(lull, 0), min(lull + 14, n_days)
        if lo < hi:
            factor[lo:hi] *= 0.75
    return factor


def demand_curve(start: date, n_days: int, scale: float) -> np.ndarray:
    """Expected orders per day: growth x weekday x holidays, calibrated on the default
    span so that scale 1 gives about the real dataset's number of orders."""
    t = np.arange(n_days, dtype=np.float64)
    base = ORDERS_AT_SCALE_1 / _level(np.arange(DEFAULT_SPAN_DAYS, dtype=np.float64)).sum()
    weekday = np.asarray(WEEKDAY_WEIGHTS) / np.mean(WEEKDAY_WEIGHTS)
    dow = (start.weekday() + np.arange(n_days)) % 7
    # The regular sellers add about 2.5% on top of the curve.
    return 0.975 * scale * base * _level(t) * weekday[dow] * _holiday_factor(start, n_days)


def _entry_density(t: np.ndarray) -> np.ndarray:
    return 0.35 + _level(t)


def seller_count(n_days: int, scale: float) -> int:
    """Candidate sellers for the span: proportional to scale and to the entry mass."""
    mass = _entry_density(np.arange(n_days, dtype=np.float64)).sum()
    default = _entry_density(np.arange(DEFAULT_SPAN_DAYS, dtype=np.float64)).sum()
    target = SELLERS_AT_SCALE_1 * scale * mass / default
    return max(8, round(target * _CANDIDATES_PER_SELLER))


def _exit_age(rng: np.random.Generator, log_hazard: np.ndarray) -> np.ndarray:
    """Days from entry to exit under hazard h(a) = exp(eta) * (h1 + h2 * exp(-a / tau)):
    a constant part plus an early-tenure part (new sellers churn more)."""
    h1, h2, tau = 1.0 / 420.0, 1.0 / 70.0, 80.0
    mult = np.exp(log_hazard)
    late_part = rng.exponential(1.0, len(mult)) / (h1 * mult)
    e = rng.exponential(1.0, len(mult))
    cap = h2 * mult * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        early_part = np.where(e < cap, -tau * np.log1p(-e / cap), np.inf)
    return np.minimum(late_part, early_part)


def _shifted(entry: np.ndarray, exit_day: np.ndarray, day: int, hazard: float) -> np.ndarray:
    """Exit days once exits come `hazard` times sooner from `day` on (see `Shift`)."""
    start = np.maximum(entry, day)
    sooner = start + np.ceil((exit_day - start) / hazard)
    return np.where(exit_day >= start, sooner, exit_day)


def draw_sellers(
    rng: np.random.Generator,
    n: int,
    n_days: int,
    dynamics: Dynamics | None = None,
    shift: tuple[int, Shift] | None = None,
) -> Sellers:
    """Seller traits, entry days and exit days (exit depends on the traits); `shift`, a
    change of dynamics from a day of the span on (the day's index and the change)."""
    dyn = dynamics or Dynamics()
    t = np.arange(n_days, dtype=np.float64)
    founders = rng.random(n) < 0.07
    entry = np.where(
        founders,
        rng.integers(0, min(14, n_days), n),
        draw(rng, _entry_density(t), n),
    )
    regular = rng.random(n) < _REGULAR_SHARE
    size = rng.lognormal(0.0, 1.2, n).clip(0.0, 25.0)  # no seller owns the market
    late_p = 0.03 + 0.4 * rng.beta(0.8, 6.0, n)
    bad_review = np.clip(0.9 * (late_p - 0.03) + 0.12 * rng.beta(1.0, 5.0, n), 0.0, 0.9)
    breadth = rng.normal(0.0, 1.0, n)
    log_price = rng.normal(np.log(85.0), 0.6, n) + 0.15 * breadth
    # Reliable regulars: good service, so their steadiness is not mistaken for luck.
    late_p = np.where(regular, 0.03, late_p)
    bad_review = np.where(regular, 0.03, bad_review)
    log_hazard = (
        dyn.late * (late_p - 0.07)
        + dyn.review * (bad_review - 0.06)
        - dyn.breadth * breadth
        - dyn.price * (log_price - np.log(85.0))
        - dyn.size * np.log(size)
    )
    exit_day = entry + np.ceil(_exit_age(rng, log_hazard))
    if shift is not None:
        exit_day = _shifted(entry, exit_day, shift[0], shift[1].hazard)
    exit_day = np.where(regular | (exit_day >= n_days), _NO_EXIT, exit_day).astype(np.int64)
    return Sellers(
        entry=entry.astype(np.int64),
        exit=exit_day,
        size=np.where(regular, 0.0, size),
        late_p=late_p,
        bad_review=bad_review,
        breadth=breadth,
        log_price=log_price,
        cancel_p=0.003 + 0.04 * late_p,
        handling_days=rng.lognormal(np.log(2.0), 0.35, n) * (1.0 + 3.0 * late_p),
        decline_days=rng.integers(dyn.decline_min, dyn.decline_max, n).astype(np.int64),
        regular=regular,
    )


def _intensity(sellers: Sellers, rows: slice, n_days: int, noise: np.ndarray) -> np.ndarray:
    """Unnormalised sales rate of a block of sellers for every day of the span."""
    t = np.arange(n_days)[None, :]
    entry = sellers.entry[rows, None]
    exit_day = sellers.exit[rows, None]
    age = (t - entry).astype(np.float64)
    active = (age >= 0) & (t < exit_day)
    ramp = 1.0 - 0.7 * np.exp(-np.maximum(age, 0.0) / 25.0)
    fade = np.clip((exit_day - t) / sellers.decline_days[rows, None], 0.0, 1.0)
    rate = sellers.size[rows, None] * ramp * (0.2 + 0.8 * fade) * noise[:, t[0] // 30]
    return np.where(active, rate, 0.0)


def poisson_sales(
    rng: np.random.Generator, sellers: Sellers, demand: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(seller, day) of each order of the ordinary sellers: per seller-day Poisson counts
    whose day totals follow the demand curve; sellers share a day by size and lifecycle."""
    n, n_days = len(sellers), len(demand)
    noise = rng.lognormal(0.0, 0.3, (n, n_days // 30 + 1))
    blocks = [slice(lo, min(lo + _CHUNK, n)) for lo in range(0, n, _CHUNK)]
    total = np.zeros(n_days)
    for rows in blocks:
        total += _intensity(sellers, rows, n_days, noise[rows]).sum(axis=0)
    per_unit = np.divide(demand, total, out=np.zeros(n_days), where=total > 0)
    seller_parts, day_parts = [], []
    for rows in blocks:
        counts = rng.poisson(_intensity(sellers, rows, n_days, noise[rows]) * per_unit)
        s, d = np.nonzero(counts)
        reps = counts[s, d]
        seller_parts.append(np.repeat(s + rows.start, reps))
        day_parts.append(np.repeat(d, reps))
    return np.concatenate(seller_parts), np.concatenate(day_parts)


def regular_sales(
    rng: np.random.Generator, sellers: Sellers, n_days: int
) -> tuple[np.ndarray, np.ndarray]:
    """(seller, day) of the rare-but-regular sellers: one sale every 28-38 days (with
    +-3 days of jitter the gap never reaches the 45-day churn horizon)."""
    idx = np.flatnonzero(sellers.regular)
    period = rng.uniform(28.0, 38.0, len(idx))
    k = np.arange(n_days // 28 + 2)[None, :]
    jitter = rng.integers(-3, 4, (len(idx), k.shape[1]))
    first = sellers.entry[idx] + rng.integers(0, 10, len(idx))
    days = np.round(first[:, None] + k * period[:, None]).astype(np.int64) + jitter
    days = np.maximum(days, sellers.entry[idx, None])
    ok = days < n_days
    rows = np.broadcast_to(idx[:, None], days.shape)
    return rows[ok], days[ok]


def sale_events(
    rng: np.random.Generator, sellers: Sellers, demand: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(seller, day) of every order: ordinary sellers plus the regular ones, so the
    regulars add a little on top of the demand curve."""
    s1, d1 = poisson_sales(rng, sellers, demand)
    s2, d2 = regular_sales(rng, sellers, len(demand))
    return np.concatenate([s1, s2]), np.concatenate([d1, d2])
