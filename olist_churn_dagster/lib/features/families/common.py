"""What the six feature families share: window labels, dtypes and small SQL helpers."""

from __future__ import annotations

import polars as pl

from olist_churn_dagster.lib.features.engine import MS_PER_DAY, FeatureSpec, Output, day, ratio

WINDOW = "window"  # the `window_days` (default 180) days before D
LAST_30 = "30d"
LIFETIME = "lifetime"
AT_D = "at D"

Row = tuple[str, type[pl.DataType], str, str, str, str]


def outputs(family: str, rows: list[Row]) -> tuple[Output, ...]:
    """(name, dtype, sql, meaning, window, unit) rows -> Output objects."""
    return tuple(
        Output(FeatureSpec(family, name, meaning, window, unit), dtype, sql)
        for name, dtype, sql, meaning, window, unit in rows
    )


def money(expr: str) -> str:
    return f"(CAST({expr} AS DOUBLE) / 1e6)"


def mean_days(sum_ms: str, n: str) -> str:
    return f"({ratio(sum_ms, n)} / {MS_PER_DAY})"


def sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


FLOAT, INT = pl.Float64, pl.Int64
PURCHASE_DAY = day("order_purchase_timestamp")
