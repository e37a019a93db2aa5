"""Places, products, payments and reviews of the synthetic marketplace.

Each builder draws from real reference files when they were given (seller locations,
product attributes and categories, payment structures) and from the built-in
distributions of `distributions` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from olist_churn_dagster.generator import distributions as gd
from olist_churn_dagster.generator.draws import DAY, draw, draw_rows, zip_prefixes
from olist_churn_dagster.lib.ingest.schema import PAYMENT_TYPES

STATE_CODES: tuple[str, ...] = tuple(gd.STATES)
_CITY_STATE = np.array([STATE_CODES.index(c[0]) for c in gd.CITIES])
_CITY_LO = np.array([c[2] for c in gd.CITIES])
_CITY_HI = np.array([c[3] for c in gd.CITIES])
_CITY_W = np.array([c[4] for c in gd.CITIES])
_CITY_NAMES = pl.Series([c[1] for c in gd.CITIES])
_STATE_NAMES = pl.Series(STATE_CODES)


@dataclass(frozen=True)
class Reference:
    """Real files to draw from; any part may be None."""

    sellers: pl.DataFrame | None  # seller_zip_code_prefix, seller_city, seller_state
    products: pl.DataFrame | None  # typed products table (without product_id)
    payments: pl.DataFrame | None  # typed payments table
    categories: pl.DataFrame | None  # category translation table


def _state_weights(column: int) -> np.ndarray:
    shares = np.array([v[column] for v in gd.STATES.values()])
    within = _CITY_W / np.bincount(_CITY_STATE, weights=_CITY_W)[_CITY_STATE]
    return shares[_CITY_STATE] * within


def builtin_places(rng: np.random.Generator, n: int, *, sellers: bool) -> pl.DataFrame:
    """n (zip prefix, city, state) rows from the built-in city table."""
    city = draw(rng, _state_weights(1 if sellers else 0), n)
    zips = _CITY_LO[city] + np.floor(rng.random(n) * (_CITY_HI[city] - _CITY_LO[city] + 1))
    return pl.DataFrame(
        {
            "zip": zip_prefixes(zips),
            "city": _CITY_NAMES.gather(city),
            "state": _STATE_NAMES.gather(_CITY_STATE[city]),
        }
    )


def seller_places(rng: np.random.Generator, n: int, ref: Reference) -> pl.DataFrame:
    """Seller locations: real seller locations (shuffled, reused if needed) or built-in."""
    if ref.sellers is None or ref.sellers.height == 0:
        return builtin_places(rng, n, sellers=True)
    m = ref.sellers.height
    idx = np.concatenate([rng.permutation(m) for _ in range(n // m + 1)])[:n]
    return ref.sellers.select(
        pl.col("seller_zip_code_prefix").alias("zip"),
        pl.col("seller_city").alias("city"),
        pl.col("seller_state").alias("state"),
    )[idx]


def state_index(states: pl.Series) -> np.ndarray:
    """Index into STATE_CODES (unknown states count as SP, the marketplace's centre)."""
    mapping = {s: i for i, s in enumerate(STATE_CODES)}
    return states.replace_strict(mapping, default=0, return_dtype=pl.Int64).to_numpy()


def transit_days(seller_state: np.ndarray, customer_state: np.ndarray) -> np.ndarray:
    """Median days from carrier to customer: by destination, longer across states."""
    base = np.array([v[4] for v in gd.STATES.values()])
    return base[customer_state] + 2.0 * (seller_state != customer_state)


def customer_identity(rng: np.random.Generator, n: int) -> np.ndarray:
    """For each order (in time order), the index of the customer's first order: about
    3.4% of orders come from someone who bought before."""
    first = np.arange(n)
    repeat = rng.random(n) < 0.034
    repeat[0] = False
    idx = np.flatnonzero(repeat)
    first[idx] = np.floor(rng.random(len(idx)) * idx).astype(np.int64)
    while True:  # pointer jumping: a few rounds make every chain point at its root
        nxt = first[first]
        if np.array_equal(nxt, first):
            return first
        first = nxt


def categories_table(ref: Reference) -> pl.DataFrame:
    """Category translation: the real table if given, otherwise the built-in copy."""
    if ref.categories is not None:
        return ref.categories
    return pl.DataFrame(
        {
            "product_category_name": [c[0] for c in gd.CATEGORIES],
            "product_category_name_english": [c[1] for c in gd.CATEGORIES],
        }
    )


def category_pool(ref: Reference) -> tuple[pl.Series, np.ndarray]:
    """Category names and how common they are among products."""
    if ref.products is not None:
        counts = (
            ref.products.drop_nulls("product_category_name")
            .group_by("product_category_name")
            .len()
            .sort("product_category_name")
        )
        return counts["product_category_name"], counts["len"].to_numpy().astype(np.float64)
    names = pl.Series([c[0] for c in gd.CATEGORIES])
    return names, np.array([c[2] for c in gd.CATEGORIES], dtype=np.float64)


def _builtin_attributes(rng: np.random.Generator, n: int) -> pl.DataFrame:
    weight = np.round(rng.lognormal(np.log(700.0), 1.15, n)).clip(50, 40_000)
    side = (weight / 700.0) ** (1.0 / 3.0)
    return pl.DataFrame(
        {
            "product_name_lenght": np.round(rng.normal(48, 10, n)).clip(5, 76),
            "product_description_lenght": np.round(rng.lognormal(6.4, 0.75, n)).clip(4, 3992),
            "product_photos_qty": 1 + np.minimum(rng.geometric(0.5, n) - 1, 19),
            "product_weight_g": weight,
            "product_length_cm": np.round(25 * side * rng.lognormal(0, 0.3, n)).clip(7, 105),
            "product_height_cm": np.round(13 * side * rng.lognormal(0, 0.5, n)).clip(2, 105),
            "product_width_cm": np.round(20 * side * rng.lognormal(0, 0.3, n)).clip(6, 118),
        }
    ).cast(pl.Int64)


def product_attributes(
    rng: np.random.Generator, category: pl.Series, ref: Reference
) -> pl.DataFrame:
    """Name/description lengths, photos, weight and size per product: a real product of
    the same category when given, otherwise the built-in distributions. Products without
    a category lack name, description and photos, as in the real data."""
    n = len(category)
    attrs = _builtin_attributes(rng, n)
    if ref.products is not None:
        real = ref.products.drop_nulls("product_category_name").sort(
            "product_category_name", maintain_order=True
        )
        names, starts = np.unique(real["product_category_name"].to_numpy(), return_index=True)
        sizes = np.diff(np.r_[starts, real.height])
        pos = np.searchsorted(names, category.fill_null("").to_numpy()).clip(0, len(names) - 1)
        row = starts[pos] + np.floor(rng.random(n) * sizes[pos]).astype(np.int64)
        picked = real.drop("product_category_name")[row].select(attrs.columns)
        attrs = picked.with_columns(
            pl.coalesce(pl.col(c), attrs[c]).alias(c) for c in attrs.columns
        )
    blank = pl.lit(category.is_null())
    heads = ["product_name_lenght", "product_description_lenght", "product_photos_qty"]
    return attrs.with_columns(pl.when(~blank).then(pl.col(c)).alias(c) for c in heads)


# --- payments ---------------------------------------------------------------------------

_PRIMARY = (0.7695, 0.199, 0.016, 0.0155)  # credit_card, boleto, voucher, debit_card


def _payment_rows(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.repeat(np.arange(len(counts)), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return order, np.arange(len(order)) - starts + 1


def _split_cents(total: np.ndarray, share: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Cents per payment row from shares; the remainder goes to each order's first row."""
    cents = np.floor(total[order] * share).astype(np.int64)
    rest = total - np.bincount(order, weights=cents, minlength=len(total)).astype(np.int64)
    first = np.r_[True, order[1:] != order[:-1]]
    cents[first] += rest
    return cents


def builtin_payments(rng: np.random.Generator, total: np.ndarray) -> pl.DataFrame:
    """Primary payment plus, for ~3% of orders, extra voucher payments."""
    n = len(total)
    extra = np.where(rng.random(n) < 0.03, 1 + np.minimum(rng.geometric(0.6, n) - 1, 10), 0)
    order, seq = _payment_rows(1 + extra)
    primary = draw(rng, _PRIMARY, n)
    kind = np.where(seq == 1, primary[order], 2)
    weights = np.where(seq == 1, rng.uniform(0.5, 3.0, len(order)), rng.random(len(order)))
    share = weights / np.bincount(order, weights=weights)[order]
    cents = _split_cents(total, share, order)
    inst_values = np.array([v for v, _ in gd.INSTALLMENTS])
    inst = inst_values[draw(rng, [w for _, w in gd.INSTALLMENTS], len(order))]
    inst = np.minimum(inst, np.maximum(1, cents // 1500))
    inst = np.where(kind == 0, inst, 1)
    return _payments_frame(order, seq, kind, inst, cents)


def _payments_frame(
    order: np.ndarray, seq: np.ndarray, kind: np.ndarray, inst: np.ndarray, cents: np.ndarray
) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "order": order,
            "payment_sequential": seq.astype(np.int64),
            "type_code": kind.astype(np.int64),
            "payment_installments": inst.astype(np.int64),
            "payment_value": cents / 100.0,
        }
    )


def real_payments(rng: np.random.Generator, total: np.ndarray, real: pl.DataFrame) -> pl.DataFrame:
    """Copy the payment structure (types, installments, value shares) of a real order of
    similar value, so the real mix and its link to order value carry over."""
    rows = (
        real.drop_nulls()
        .with_columns(pl.col("payment_value").sum().over("order_id").alias("order_total"))
        .filter(pl.col("order_total") > 0)
        .sort("order_total", "order_id", "payment_sequential")
    )
    first = np.r_[True, rows["order_id"].to_numpy()[1:] != rows["order_id"].to_numpy()[:-1]]
    starts = np.flatnonzero(first)
    sizes = np.diff(np.r_[starts, rows.height])
    order_total = rows["order_total"].to_numpy()[starts]
    pos = np.searchsorted(order_total, total / 100.0) + rng.integers(-150, 151, len(total))
    pick = pos.clip(0, len(starts) - 1)
    order, seq = _payment_rows(sizes[pick])
    src = starts[pick][order] + seq - 1
    share = rows["payment_value"].to_numpy()[src] / rows["order_total"].to_numpy()[src]
    cents = _split_cents(total, share, order)
    codes = {t: i for i, t in enumerate(PAYMENT_TYPES)}
    kind = rows["payment_type"].replace_strict(codes, default=4).to_numpy()[src]
    inst = rows["payment_installments"].to_numpy()[src]
    return _payments_frame(order, seq, kind, inst, cents)


# --- reviews ----------------------------------------------------------------------------

_GOOD_MIX = np.array([0.066, 0.022, 0.08, 0.205, 0.627])
_BAD_MIX = np.array([0.55, 0.12, 0.13, 0.09, 0.11])
_COMMENT_P = np.array([0.75, 0.7, 0.55, 0.3, 0.33])
_TITLE_P = np.array([0.2, 0.18, 0.12, 0.1, 0.1])


def review_scores(rng: np.random.Generator, bad_weight: np.ndarray) -> np.ndarray:
    """Scores 1..5 from a mix of a happy and an unhappy score profile."""
    w = bad_weight.clip(0.0, 1.0)[:, None]
    return 1 + draw_rows(rng, (1.0 - w) * _GOOD_MIX + w * _BAD_MIX)


def _pick(rng: np.random.Generator, pools: list[tuple[str, ...]], which: np.ndarray) -> pl.Series:
    """One random text per row from the pool chosen by `which`."""
    flat = [t for pool in pools for t in pool]
    offsets = np.cumsum([0] + [len(p) for p in pools])
    sizes = np.diff(offsets)
    idx = offsets[which] + np.floor(rng.random(len(which)) * sizes[which]).astype(np.int64)
    return pl.Series(flat).gather(idx)


def review_texts(rng: np.random.Generator, score: np.ndarray) -> tuple[pl.Series, pl.Series]:
    """Comment titles and messages: mostly empty, Portuguese phrases otherwise; some
    hold commas, quotes and line breaks, as real comments do."""
    n = len(score)
    mood = np.where(score <= 2, 1, np.where(score == 3, 2, 0))
    phrases = [gd.PHRASES_GOOD, gd.PHRASES_BAD, gd.PHRASES_MID]
    titles = [gd.TITLES_GOOD, gd.TITLES_BAD, gd.TITLES_MID]
    first = _pick(rng, phrases, mood)
    second = _pick(rng, phrases, mood)
    joiner = pl.Series(gd.JOINERS).gather(draw(rng, np.ones(len(gd.JOINERS)), n))
    two = pl.Series(rng.random(n) < 0.45)
    message = pl.select(
        pl.when(pl.lit(two)).then(pl.concat_str(first, joiner, second)).otherwise(first)
    ).to_series()
    has_msg = pl.Series(rng.random(n) < _COMMENT_P[score - 1])
    has_title = pl.Series(rng.random(n) < _TITLE_P[score - 1])
    title = _pick(rng, titles, mood)
    return (
        pl.select(pl.when(pl.lit(has_title)).then(title)).to_series(),
        pl.select(pl.when(pl.lit(has_msg)).then(message)).to_series(),
    )


def review_days(rng: np.random.Generator, n: int) -> np.ndarray:
    """Days between the trigger (delivery or passed estimate) and the review request."""
    return 1 + draw(rng, [0.75, 0.15, 0.06, 0.04], n)


def answer_delay(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds from review request to the customer's answer."""
    return rng.lognormal(np.log(DAY), 1.0, n).clip(3600, 20 * DAY).astype(np.int64)


def geolocation(rng: np.random.Generator, places: pl.DataFrame) -> pl.DataFrame:
    """A few points per zip prefix in use, scattered around the state's capital."""
    uniq = places.unique(["zip"], keep="first", maintain_order=True).sort("zip")
    reps = 1 + draw(rng, [0.5, 0.3, 0.2], uniq.height)
    rows = uniq[np.repeat(np.arange(uniq.height), reps)]
    coords = np.array([(v[2], v[3]) for v in gd.STATES.values()])
    st = state_index(rows["state"])
    spread = rng.normal(0.0, 0.35, (rows.height, 2))
    return pl.DataFrame(
        {
            "geolocation_zip_code_prefix": rows["zip"],
            "geolocation_lat": np.round(coords[st, 0] + spread[:, 0], 6),
            "geolocation_lng": np.round(coords[st, 1] + spread[:, 1], 6),
            "geolocation_city": rows["city"],
            "geolocation_state": rows["state"],
        }
    )
