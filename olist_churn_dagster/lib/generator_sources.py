"""Where the generator's realistic ingredients come from: the real Olist files when they are
at hand (seller locations, product attributes and categories, payment mixes), otherwise the
built-in distributions of `generator_data`. Both paths give the same `Sources` shape, so the
rest of the generator never asks which one it got."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from olist_churn_dagster.lib import generator_data as data
from olist_churn_dagster.lib.generator_common import pick, zip_prefixes
from olist_churn_dagster.lib.schema import CATEGORY_TRANSLATION, PRODUCTS, SELLERS

PRODUCT_ATTRIBUTES = [c for c in PRODUCTS.columns if c not in ("product_id",)]
STATE_NAMES = list(data.STATES)


@dataclass(frozen=True)
class PaymentMix:
    """Primary payment type shares, credit-card installments, and extra payment rows."""

    types: tuple[str, ...]
    type_weights: np.ndarray
    installments: np.ndarray
    installment_weights: np.ndarray
    extra_share: float  # share of orders with more than one payment row
    extra_counts: np.ndarray  # number of extra rows, for orders that have some
    extra_weights: np.ndarray


@dataclass(frozen=True)
class Sources:
    """Pools the generator samples from (with its own seeded RNG)."""

    seller_places: pl.DataFrame | None  # zip/city/state rows of real sellers
    products: pl.DataFrame  # product attribute rows (no id), category may be null
    translation: pl.DataFrame  # the category translation table
    payments: PaymentMix


def _read(path: Path) -> pl.DataFrame:
    df = pl.read_csv(path, infer_schema=False)
    df.columns = [c.lstrip("\ufeff").strip() for c in df.columns]
    return df.with_columns(pl.col(pl.String).str.strip_chars("\r"))


def _cast(df: pl.DataFrame, columns: dict[str, pl.DataType]) -> pl.DataFrame:
    return df.select(pl.col(c).cast(t, strict=False) for c, t in columns.items())


def load_sources(real_dir: Path | None) -> Sources:
    """Real pools for each file that exists in real_dir; built-in ones for the rest."""

    def real(name: str) -> Path | None:
        path = real_dir / name if real_dir is not None else None
        return path if path is not None and path.is_file() else None

    sellers = real(SELLERS.file_name)
    products = real(PRODUCTS.file_name)
    translation = real(CATEGORY_TRANSLATION.file_name)
    payments = real("olist_order_payments_dataset.csv")
    return Sources(
        seller_places=_real_seller_places(sellers) if sellers else None,
        products=_real_products(products) if products else _builtin_products(),
        translation=(
            _cast(_read(translation), CATEGORY_TRANSLATION.columns)
            if translation
            else _builtin_translation()
        ),
        payments=_real_payments(payments) if payments else _builtin_payments(),
    )


def _real_seller_places(path: Path) -> pl.DataFrame:
    cols = {c: pl.String() for c in ("seller_zip_code_prefix", "seller_city", "seller_state")}
    df = _cast(_read(path), cols).drop_nulls()
    return df.with_columns(pl.col("seller_zip_code_prefix").str.zfill(5))


def _real_products(path: Path) -> pl.DataFrame:
    return _cast(_read(path), {c: PRODUCTS.columns[c] for c in PRODUCT_ATTRIBUTES})


def _real_payments(path: Path) -> PaymentMix:
    df = _read(path).select(
        "order_id",
        pl.col("payment_sequential").cast(pl.Int64, strict=False),
        "payment_type",
        pl.col("payment_installments").cast(pl.Int64, strict=False),
    )
    first = df.filter(pl.col("payment_sequential") == 1)
    types = first.group_by("payment_type").len().sort("payment_type")
    cards = (
        first.filter(
            (pl.col("payment_type") == "credit_card") & (pl.col("payment_installments") > 0)
        )
        .group_by("payment_installments")
        .len()
        .sort("payment_installments")
    )
    rows = df.group_by("order_id").len()
    extras = rows.filter(pl.col("len") > 1).group_by("len").len(name="n").sort("len")
    return PaymentMix(
        types=tuple(types["payment_type"].to_list()),
        type_weights=types["len"].to_numpy().astype(np.float64),
        installments=cards["payment_installments"].to_numpy(),
        installment_weights=cards["len"].to_numpy().astype(np.float64),
        extra_share=extras["n"].sum() / max(rows.height, 1),
        extra_counts=extras["len"].to_numpy() - 1,
        extra_weights=extras["n"].to_numpy().astype(np.float64),
    )


def _builtin_translation() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "product_category_name": [c[0] for c in data.CATEGORIES],
            "product_category_name_english": [c[1] for c in data.CATEGORIES],
        }
    )


def _builtin_products(n: int = 20_000, seed: int = 20_180_901) -> pl.DataFrame:
    """A pool of plausible product attribute rows (fixed seed: it stands in for a file)."""
    rng = np.random.default_rng(seed)
    names = [c[0] for c in data.CATEGORIES]
    cat = pick(rng, [c[2] for c in data.CATEGORIES], n)
    no_cat = rng.random(n) < 0.019
    weight = np.clip(np.exp(rng.normal(6.5, 1.3, n)), 50, 40_000).round()
    side = np.cbrt(weight / 0.2)  # a box of about 0.2 g/cm3
    dims = np.clip(side[:, None] * np.exp(rng.normal(0, 0.35, (n, 3))), 2, 105).round()
    df = pl.DataFrame(
        {
            "product_category_name": pl.Series(np.array(names)[cat]),
            "product_name_lenght": rng.integers(20, 64, n),
            "product_description_lenght": np.clip(np.exp(rng.normal(6.4, 0.8, n)), 20, 3990),
            "product_photos_qty": 1 + rng.geometric(0.55, n) - 1,
            "product_weight_g": weight,
            "product_length_cm": dims[:, 0],
            "product_height_cm": dims[:, 1],
            "product_width_cm": dims[:, 2],
        }
    )
    described = ["product_name_lenght", "product_description_lenght", "product_photos_qty"]
    df = df.with_columns(
        pl.when(pl.Series(~no_cat)).then(pl.col(c)).otherwise(None).alias(c)
        for c in ("product_category_name", *described)
    )
    return _cast(df, {c: PRODUCTS.columns[c] for c in PRODUCT_ATTRIBUTES})


def _builtin_payments() -> PaymentMix:
    return PaymentMix(
        types=("boleto", "credit_card", "debit_card", "voucher"),
        type_weights=np.array([19_784, 76_505, 1_528, 1_621], dtype=np.float64),
        installments=np.array([i for i, _ in data.INSTALLMENTS]),
        installment_weights=np.array([w for _, w in data.INSTALLMENTS], dtype=np.float64),
        extra_share=0.029,
        extra_counts=np.array([1, 2, 3, 4, 5, 6, 8, 10]),
        extra_weights=np.array([2_246, 301, 100, 40, 25, 15, 8, 5], dtype=np.float64),
    )


def sample_places(
    rng: np.random.Generator, n: int, state_weights: np.ndarray
) -> tuple[pl.Series, pl.Series, pl.Series]:
    """n (zip prefix, city, state) triples from the built-in city table, states drawn with
    the given weights (aligned with STATE_NAMES)."""
    cities = data.CITIES
    state_of_city = np.array([STATE_NAMES.index(c[0]) for c in cities])
    order = np.argsort(state_of_city, kind="stable")
    sorted_state = state_of_city[order]
    city_w = np.array([c[4] for c in cities], dtype=np.float64)[order]
    # Cumulative weight within each state, shifted by the state's index: one sorted key
    # in which "state s, uniform u" is simply s + u.
    totals = np.bincount(sorted_state, weights=city_w, minlength=len(STATE_NAMES))
    cum = np.cumsum(city_w) - np.repeat(
        np.cumsum(totals) - totals, np.bincount(sorted_state, minlength=len(STATE_NAMES))
    )
    key = sorted_state + cum / totals[sorted_state]
    state = pick(rng, state_weights, n)
    at = np.searchsorted(key, state + rng.random(n), side="right")
    city = order[np.minimum(at, len(order) - 1)]
    low = np.array([c[2] for c in cities])[city]
    high = np.array([c[3] for c in cities])[city]
    zips = low + (rng.random(n) * (high - low + 1)).astype(np.int64)
    names = np.array([c[1] for c in cities])[city]
    return zip_prefixes(zips), pl.Series(names), pl.Series(np.array(STATE_NAMES)[state])
