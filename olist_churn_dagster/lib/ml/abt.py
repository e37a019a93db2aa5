"""The analytical base table (ABT): features of all families plus the mature churn label.

One row per seller and cohort date. The feature tables must describe exactly the same
(reference_date, seller_id) rows: a table that silently misses sellers would turn into
nulls that look like real missing values to the model, so a mismatch is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta

import polars as pl

from olist_churn_dagster.lib.tables import KEYS

LABEL = "churned"


def cohort_dates(start: date, end: date, *, day: int = 1) -> list[date]:
    """The dates in [start, end] whose day of month is `day` (monthly cohorts)."""
    if not 1 <= day <= 28:
        raise ValueError(f"cohort day must be between 1 and 28 (every month has it), got {day}")
    first = date(start.year, start.month, day)
    if first < start:
        first = date(start.year + start.month // 12, start.month % 12 + 1, day)
    if first > end:
        return []
    return pl.date_range(first, end, "1mo", eager=True).to_list()


def _check_keys(name: str, table: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in KEYS if c not in table.columns]
    if missing:
        raise ValueError(f"feature table {name!r} lacks key column(s) {missing}")
    keys = table.select(pl.col("reference_date").cast(pl.Date), "seller_id")
    if keys.is_duplicated().any():
        raise ValueError(f"feature table {name!r} has duplicate (reference_date, seller_id) rows")
    return keys


def _check_same_rows(name: str, keys: pl.DataFrame, ref_name: str, ref: pl.DataFrame) -> None:
    extra = keys.join(ref, on=KEYS, how="anti")
    lacking = ref.join(keys, on=KEYS, how="anti")
    if extra.height or lacking.height:
        example = (extra if extra.height else lacking).row(0)
        raise ValueError(
            f"feature table {name!r} does not cover the same (reference_date, seller_id) rows "
            f"as {ref_name!r}: {extra.height} extra, {lacking.height} missing "
            f"(e.g. {example[0]}, {example[1]})"
        )


def join_features(feature_tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """Join the feature tables on the keys after checking they share rows and column names."""
    if not feature_tables:
        raise ValueError("build_abt needs at least one feature table")
    names = list(feature_tables)
    ref_keys = _check_keys(names[0], feature_tables[names[0]])
    seen: dict[str, str] = {}
    for name in names:
        table = feature_tables[name]
        _check_same_rows(name, _check_keys(name, table), names[0], ref_keys)
        for col in table.columns:
            if col in KEYS:
                continue
            if col in seen or col == LABEL:
                where = seen.get(col, "the label")
                raise ValueError(f"feature column {col!r} of {name!r} also comes from {where}")
            seen[col] = name
    joined = feature_tables[names[0]].with_columns(pl.col("reference_date").cast(pl.Date))
    for name in names[1:]:
        table = feature_tables[name].with_columns(pl.col("reference_date").cast(pl.Date))
        joined = joined.join(table, on=KEYS, how="inner")
    return joined


def build_abt(
    feature_tables: Mapping[str, pl.DataFrame],
    labels: pl.DataFrame,
    *,
    drop_partial_cohorts: bool = True,
) -> pl.DataFrame:
    """Features of every table plus `churned`, mature rows only, sorted by date and seller.

    Every feature row needs a label row (same spine). With `drop_partial_cohorts`, a
    reference date where some labels are still immature is left out whole: its mature rows
    are only the sellers silent for longest, a biased sample that would inflate churn.
    """
    features = join_features(feature_tables)
    label_rows = labels.select(
        pl.col("reference_date").cast(pl.Date), "seller_id", LABEL, "label_mature"
    )
    if label_rows.select(KEYS).is_duplicated().any():
        raise ValueError("labels have duplicate (reference_date, seller_id) rows")
    unlabelled = features.select(KEYS).join(label_rows, on=KEYS, how="anti")
    if unlabelled.height:
        first = unlabelled.row(0)
        raise ValueError(
            f"{unlabelled.height} feature rows have no label (e.g. {first[0]}, {first[1]}); "
            "features and labels must come from the same spine"
        )
    abt = features.join(label_rows, on=KEYS, how="inner")
    mature = pl.col("label_mature") & pl.col(LABEL).is_not_null()
    if drop_partial_cohorts:
        mature = mature.all().over("reference_date")
    feature_cols = [c for c in features.columns if c not in KEYS]
    return abt.filter(mature).select(*KEYS, *feature_cols, pl.col(LABEL).cast(pl.Int8)).sort(KEYS)


def feature_columns(abt: pl.DataFrame) -> list[str]:
    """The model's inputs: every ABT column except the keys and the label."""
    return [c for c in abt.columns if c not in (*KEYS, LABEL)]


def mature_cohort_dates(
    first: date, last_purchase: date, *, horizon_days: int, day: int = 1
) -> list[date]:
    """Monthly cohort dates from `first` whose labels have all matured by `last_purchase`.

    Derived from the data's dates alone (no partition definition needed): a cohort D is
    mature when every active seller's silence mark, at most D - 1 + horizon, is before the
    last purchase.
    """
    horizon = timedelta(days=horizon_days)
    return [
        d
        for d in cohort_dates(first, last_purchase, day=day)
        if d - timedelta(days=1) + horizon < last_purchase
    ]


def abt_from_raw(
    raw: Mapping[str, pl.DataFrame],
    dates: list[date],
    *,
    window_days: int = 180,
    horizon_days: int = 45,
) -> pl.DataFrame:
    """The ABT for any reference dates straight from the raw tables, with the same feature
    and label code as the assets: for benchmarks and experiments without a warehouse."""
    from olist_churn_dagster.lib.features import FEATURE_FAMILIES, compute_features
    from olist_churn_dagster.lib.ml.labels import churn_labels
    from olist_churn_dagster.lib.sales import sale_items

    sales = sale_items(raw["orders"], raw["order_items"])
    tables = {
        family: compute_features(
            family, raw, dates, window_days=window_days, horizon_days=horizon_days, sales=sales
        )
        for family in FEATURE_FAMILIES
    }
    spine = tables["sales"].select(KEYS)
    labels = churn_labels(raw["orders"], raw["order_items"], spine, horizon_days=horizon_days)
    return build_abt(tables, labels)
