"""Frames as native tables in asset metadata: the UI shows them sortable, with typed
columns, where a markdown table is text."""

from __future__ import annotations

import dagster as dg
import polars as pl
import polars.selectors as cs

# Rows a table shows: every row is stored in the event log with each materialization.
MAX_TABLE_ROWS = 50


def _column_type(dtype: pl.DataType) -> str:
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if dtype == pl.Boolean:
        return "bool"
    if dtype == pl.Date:
        return "date"
    return "string"


def table_value(frame: pl.DataFrame, *, max_rows: int = MAX_TABLE_ROWS) -> dg.TableMetadataValue:
    """The first `max_rows` rows of `frame` as a `dg.MetadataValue.table`: dates and other
    non-numeric values as text, floats rounded to 4 decimals, NaN as empty."""
    head = frame.head(max_rows).with_columns(
        cs.float().round(4).fill_nan(None),
        (~(cs.numeric() | cs.boolean())).cast(pl.String),
    )
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(name=name, type=_column_type(dtype))
            for name, dtype in frame.schema.items()
        ]
    )
    records = [dg.TableRecord(row) for row in head.iter_rows(named=True)]
    return dg.MetadataValue.table(records=records, schema=schema)
