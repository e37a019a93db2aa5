"""Reading the stored feature tables back from the warehouse, by reference date."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import duckdb
import polars as pl

from olist_churn_dagster.lib.features import FEATURE_FAMILIES
from olist_churn_dagster.lib.tables import feature_table


def read_feature_tables(
    conn: duckdb.DuckDBPyConnection, dates: Sequence[date]
) -> dict[str, pl.DataFrame]:
    """The six stored tables restricted to `dates`; an error names the dates not there."""
    try:
        tables = {
            family: conn.execute(
                f"SELECT * FROM {feature_table(family)} WHERE reference_date IN "
                "(SELECT unnest(?::DATE[]))",
                [list(dates)],
            ).pl()
            for family in FEATURE_FAMILIES
        }
    except duckdb.CatalogException as exc:
        raise ValueError(f"feature store not materialized yet: {exc}") from exc
    for family, table in tables.items():
        present = set(table.get_column("reference_date").unique().to_list())
        absent = sorted(set(dates) - present)
        if absent:
            shown = ", ".join(str(d) for d in absent[:5])
            raise ValueError(
                f"{feature_table(family)} has no rows for {len(absent)} date(s) ({shown}"
                f"{', ...' if len(absent) > 5 else ''}): materialize those partitions first"
            )
    return tables
