"""The warehouse IO manager, built when a step first stores or loads through it, keeps both
of its type handlers: pandas frames (dagster-duckdb-pandas's) and polars frames."""

from pathlib import Path

import dagster as dg
import pandas as pd
import polars as pl

from olist_churn_dagster.defs.warehouse import warehouse_resources
from olist_churn_dagster.lib.warehouse import open_warehouse


@dg.asset(key_prefix="ml")
def pandas_table() -> pd.DataFrame:
    return pd.DataFrame({"seller_id": ["a", "b"], "value": [1.5, 2.5]})


@dg.asset(key_prefix="ml")
def polars_copy(pandas_table: pl.DataFrame) -> pl.DataFrame:
    return pandas_table.with_columns(pl.col("value") * 2)


@dg.asset(key_prefix="ml")
def pandas_total(polars_copy: pd.DataFrame) -> None:
    assert isinstance(polars_copy, pd.DataFrame)
    assert polars_copy["value"].tolist() == [3.0, 5.0]


def test_the_io_manager_stores_and_loads_pandas_and_polars_frames(tmp_path: Path):
    database = tmp_path / "warehouse.duckdb"
    result = dg.materialize(
        [pandas_table, polars_copy, pandas_total], resources=warehouse_resources(database)
    )
    assert result.success
    conn = open_warehouse(database)
    try:
        rows = conn.execute("SELECT seller_id, value FROM ml.polars_copy ORDER BY 1").fetchall()
    finally:
        conn.close()
    assert rows == [("a", 3.0), ("b", 5.0)]
