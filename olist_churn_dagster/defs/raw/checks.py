"""Checks on the raw tables as stored in the warehouse (SQL, nothing loaded into memory).

After a load of changes (a daily snapshot) the key and reference checks look only at the
rows that load inserted, updated or deleted (`lib.ingest.delta.last_changes`): the rows
it did not touch were checked before, and the load refused any source breaking a key or
a reference, so these checks confirm it at the cost of the changes, not of the tables.
After a whole load they look at every row. `rows_checked` in their metadata says which.

All of them run in one step (`raw_table_checks`), each still its own check in the UI: a
step costs a run its own events and bookkeeping, more than most of these queries.
"""

from collections.abc import Callable

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from olist_churn_dagster.defs.raw.assets import raw_asset_key
from olist_churn_dagster.defs.warehouse import WAREHOUSE_POOL
from olist_churn_dagster.lib.ingest.delta import last_changes
from olist_churn_dagster.lib.ingest.schema import REFERENCES, TABLES
from olist_churn_dagster.lib.warehouse import count_duplicate_keys

Evaluate = Callable[[duckdb.DuckDBPyConnection], dg.AssetCheckResult]


def _count(conn: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def unique_key_result(conn: duckdb.DuckDBPyConnection, table: str) -> dg.AssetCheckResult:
    """No two rows of raw `table` share its primary key."""
    key_sql = ", ".join(TABLES[table].primary_key)
    changes = last_changes(conn, table)
    rows = f"raw.{table}"
    if changes is not None:  # a duplicate would hold a key this load wrote
        rows = f"(SELECT * FROM raw.{table} SEMI JOIN {changes[0]} USING ({key_sql}))"
    duplicates = count_duplicate_keys(conn, rows, TABLES[table].primary_key)
    return dg.AssetCheckResult(
        asset_key=raw_asset_key(table),
        check_name="unique_primary_key",
        passed=duplicates == 0,
        metadata={
            "duplicate_keys": duplicates,
            "key": key_sql,
            "rows_checked": "all" if changes is None else "changed",
        },
    )


def _rows_to_check(
    conn: duckdb.DuckDBPyConnection, table: str, col: str, parent: str, parent_col: str
) -> str:
    """The child rows a reference check looks at: all, or after loads of changes of both
    tables only the child rows written by the load and those pointing at a deleted parent
    row (no other row's reference can have broken). Those carry their key and `col` only:
    the union compares whole rows, so every other column would be read for nothing."""
    child, up = last_changes(conn, table), last_changes(conn, parent)
    if child is None or up is None:
        return f"raw.{table}"
    key = ", ".join(TABLES[table].primary_key)
    columns = ", ".join(dict.fromkeys([*TABLES[table].primary_key, col]))
    return (
        f"(SELECT {columns} FROM raw.{table} SEMI JOIN {child[0]} USING ({key}) UNION "
        f"SELECT {columns} FROM raw.{table} WHERE {col} IN (SELECT {parent_col} FROM {up[1]}))"
    )


def reference_result(conn: duckdb.DuckDBPyConnection, table: str) -> dg.AssetCheckResult:
    """Every reference of raw `table` points at a row of its parent table."""
    metadata: dict[str, int | str] = {}
    scopes = set()
    for _, col, parent, parent_col in [r for r in REFERENCES if r[0] == table]:
        rows = _rows_to_check(conn, table, col, parent, parent_col)
        scopes.add("all" if rows == f"raw.{table}" else "changed")
        metadata[f"unknown_{col}"] = _count(
            conn,
            f"SELECT count(*) FROM {rows} c ANTI JOIN raw.{parent} p ON c.{col} = p.{parent_col}",
        )
    passed = sum(v for v in metadata.values() if isinstance(v, int)) == 0
    metadata["rows_checked"] = "all" if "all" in scopes else "changed"
    return dg.AssetCheckResult(
        asset_key=raw_asset_key(table),
        check_name="references_known_rows",
        passed=passed,
        metadata=metadata,
    )


def timestamps_result(conn: duckdb.DuckDBPyConnection) -> dg.AssetCheckResult:
    """Delivery never precedes purchase (error); early approval or hand-over warns."""
    delivered_before_purchase = _count(
        conn,
        "SELECT count(*) FROM raw.orders "
        "WHERE order_delivered_customer_date < order_purchase_timestamp",
    )
    early_steps = _count(
        conn,
        "SELECT count(*) FROM raw.orders WHERE order_approved_at < order_purchase_timestamp "
        "OR order_delivered_carrier_date < order_purchase_timestamp",
    )
    if delivered_before_purchase:
        severity, passed = dg.AssetCheckSeverity.ERROR, False
    else:
        severity, passed = dg.AssetCheckSeverity.WARN, early_steps == 0
    return dg.AssetCheckResult(
        asset_key=raw_asset_key("orders"),
        check_name="timestamps_in_order",
        passed=passed,
        severity=severity,
        metadata={
            "delivered_before_purchase": delivered_before_purchase,
            "approved_or_shipped_before_purchase": early_steps,
        },
    )


def _specs() -> list[tuple[dg.AssetCheckSpec, Evaluate]]:
    specs: list[tuple[dg.AssetCheckSpec, Evaluate]] = []
    for name, spec in TABLES.items():
        if spec.primary_key:
            key = dg.AssetCheckSpec(
                "unique_primary_key",
                asset=raw_asset_key(name),
                description=f"No two rows share ({', '.join(spec.primary_key)}).",
            )
            specs.append((key, lambda conn, table=name: unique_key_result(conn, table)))
    for table in sorted({r[0] for r in REFERENCES}):
        links = [r for r in REFERENCES if r[0] == table]
        key = dg.AssetCheckSpec(
            "references_known_rows",
            asset=raw_asset_key(table),
            description="Every "
            + ", ".join(f"{col} points at a row of raw.{parent}" for _, col, parent, _ in links)
            + ".",
            additional_deps=[raw_asset_key(parent) for _, _, parent, _ in links],
        )
        specs.append((key, lambda conn, table=table: reference_result(conn, table)))
    key = dg.AssetCheckSpec(
        "timestamps_in_order",
        asset=raw_asset_key("orders"),
        description=(
            "Delivery to the customer never precedes purchase (error); approval and hand-over "
            "to the carrier before purchase are counted as a warning (the real data has a few)."
        ),
    )
    specs.append((key, timestamps_result))
    return specs


_SPECS = _specs()
_EVALUATE = {spec.key: evaluate for spec, evaluate in _SPECS}


@dg.multi_asset_check(
    specs=[spec for spec, _ in _SPECS],
    name="raw_table_checks",
    can_subset=True,
    pool=WAREHOUSE_POOL,
)
def raw_table_checks(context: dg.AssetCheckExecutionContext, warehouse: DuckDBResource):
    with warehouse.get_connection() as conn:
        for key in sorted(context.selected_asset_check_keys, key=lambda k: k.to_user_string()):
            yield _EVALUATE[key](conn)
