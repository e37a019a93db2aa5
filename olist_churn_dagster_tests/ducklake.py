"""A fresh DuckLake for a test: its own database on the session's Postgres server, its
files in a folder of the test, and the whole warehouse read back for comparisons."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from olist_churn_dagster.lib.warehouse import open_warehouse
from olist_churn_dagster.stack import postgres


@dataclass(frozen=True)
class Lake:
    database: str  # the OLIST_CHURN_WAREHOUSE value
    data_path: Path  # the OLIST_CHURN_WAREHOUSE_DATA_PATH value

    @property
    def env(self) -> dict[str, str]:
        return {
            "OLIST_CHURN_WAREHOUSE": self.database,
            "OLIST_CHURN_WAREHOUSE_DATA_PATH": str(self.data_path),
        }


def new_lake(server: postgres.PostgresServer, folder: Path) -> Lake:
    """An empty DuckLake: a new catalog database, data files under `folder`."""
    name = f"lake_{uuid.uuid4().hex[:10]}"
    postgres.create_database(server, name)
    return Lake(database=f"ducklake:postgres:{server.libpq(name)}", data_path=folder / name)


def warehouse_tables(database: str, schemas: tuple[str, ...] = ("raw", "features", "ml")) -> dict:
    """Every table of `schemas` as a polars frame with its rows in a canonical order (all
    columns, nulls last), so two warehouses compare cell for cell with `DataFrame.equals`."""
    conn = open_warehouse(database, read_only=True)
    try:
        names = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_catalog = current_database() AND table_schema IN "
            "(SELECT unnest(?::VARCHAR[])) ORDER BY 1, 2",
            [list(schemas)],
        ).fetchall()
        tables: dict[str, pl.DataFrame] = {}
        for schema, table in names:
            frame = conn.execute(f'SELECT * FROM "{schema}"."{table}"').pl()
            tables[f"{schema}.{table}"] = frame.sort(frame.columns, nulls_last=True)
    finally:
        conn.close()
    return tables


def assert_same_tables(expected: dict, actual: dict) -> None:
    """The same tables, columns, types and values (floats bit for bit)."""
    assert sorted(actual) == sorted(expected)
    for name, frame in expected.items():
        other = actual[name]
        assert other.schema == frame.schema, name
        assert other.height == frame.height, name
        assert other.equals(frame), name
