"""Reading the stored feature tables back by reference date."""

from datetime import date

import duckdb
import polars as pl
import pytest

from olist_churn_dagster.lib.features import FEATURE_FAMILIES
from olist_churn_dagster.lib.features.store import read_feature_tables
from olist_churn_dagster.lib.tables import feature_table


def _store(dates: list[date]) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    conn.execute("CREATE SCHEMA features")
    frame = pl.DataFrame({"reference_date": dates, "seller_id": ["s"] * len(dates)})
    conn.register("frame", frame)
    for family in FEATURE_FAMILIES:
        conn.execute(f"CREATE TABLE {feature_table(family)} AS SELECT * FROM frame")
    return conn


def test_reads_only_the_requested_dates():
    conn = _store([date(2018, 1, 1), date(2018, 2, 1)])
    tables = read_feature_tables(conn, [date(2018, 2, 1)])
    assert set(tables) == set(FEATURE_FAMILIES)
    assert tables["sales"].get_column("reference_date").to_list() == [date(2018, 2, 1)]


def test_names_the_dates_not_materialized():
    conn = _store([date(2018, 1, 1)])
    with pytest.raises(
        ValueError, match=r"features.seller_sales has no rows for 1 date\(s\) \(2018-03-01"
    ):
        read_feature_tables(conn, [date(2018, 1, 1), date(2018, 3, 1)])


def test_an_empty_store_says_so():
    with pytest.raises(ValueError, match="feature store not materialized yet"):
        read_feature_tables(duckdb.connect(), [date(2018, 1, 1)])


def test_dates_apart_leave_out_the_dates_between():
    days = [date(2018, 1, d) for d in range(1, 6)]
    conn = _store(days)
    tables = read_feature_tables(conn, [days[3], days[0], days[3]])
    assert tables["payments"].get_column("reference_date").sort().to_list() == [days[0], days[3]]
    assert all(t.height == 0 for t in read_feature_tables(conn, []).values())
