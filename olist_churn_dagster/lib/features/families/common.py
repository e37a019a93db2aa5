"""What the six feature families share: window labels, dtypes and small SQL helpers."""

from __future__ import annotations

import polars as pl

from olist_churn_dagster.lib.features.engine import (
    MS_PER_DAY,
    Additive,
    Cte,
    FamilyPlan,
    FeatureSpec,
    Output,
    Sliding,
    day,
    ratio,
)

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


def family_plan(
    family: str,
    columns: dict[str, tuple[str, ...]],
    ctes: tuple[Cte, ...],
    additive: tuple[Additive, ...],
    rows: list[Row],
    *,
    sliding: tuple[Sliding, ...] = (),
) -> FamilyPlan:
    """The family's plan: the raw columns and the CTEs it reads, its measures and output
    rows (see `outputs`)."""
    return FamilyPlan(
        columns=columns,
        ctes=ctes,
        additive=additive,
        sliding=sliding,
        outputs=outputs(family, rows),
    )


def extremes(source: str, column: str, *, measure: str) -> Sliding:
    """The smallest and largest `column` of the `source` rows purchased in the window, as
    the measures `<measure>_min` and `<measure>_max`."""
    return Sliding(
        source=source,
        day="purchase_day",
        aggregates={f"{measure}_min": ("min", column), f"{measure}_max": ("max", column)},
    )


def money(expr: str) -> str:
    return f"(CAST({expr} AS DOUBLE) / 1e6)"


def mean_days(sum_ms: str, n: str) -> str:
    return f"({ratio(sum_ms, n)} / {MS_PER_DAY})"


def sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


FLOAT, INT = pl.Float64, pl.Int64
PURCHASE_DAY = day("order_purchase_timestamp")
