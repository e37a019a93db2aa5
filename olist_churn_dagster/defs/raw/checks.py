"""Checks on the raw tables as stored in the warehouse (SQL, nothing loaded into memory).

After a load of changes (a daily snapshot) the key and reference checks look only at the
rows that load inserted, updated or deleted (`lib.ingest.delta.last_changes`): the rows
it did not touch were checked before, and the load refused any source breaking a key or
a reference, so these checks confirm it at the cost of the changes, not of the tables.
After a whole load they look at every row. `rows_checked` in their metadata says which.
"""

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from olist_churn_dagster.defs.raw.assets import raw_asset_key
from olist_churn_dagster.defs.warehouse import warehouse_check
from olist_churn_dagster.lib.ingest.delta import last_changes
from olist_churn_dagster.lib.ingest.schema import REFERENCES, TABLES
from olist_churn_dagster.lib.warehouse import count_duplicate_keys


def _scalar(warehouse: DuckDBResource, sql: str) -> int:
    with warehouse.get_connection() as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def _unique_key_check(table: str, key: tuple[str, ...]) -> dg.AssetChecksDefinition:
    key_sql = ", ".join(key)

    @warehouse_check(
        asset=raw_asset_key(table),
        name="unique_primary_key",
        description=f"No two rows share ({key_sql}).",
    )
    def _check(warehouse: DuckDBResource) -> dg.AssetCheckResult:
        with warehouse.get_connection() as conn:
            changes = last_changes(conn, table)
            rows = f"raw.{table}"
            if changes is not None:  # a duplicate would hold a key this load wrote
                rows = f"(SELECT * FROM raw.{table} SEMI JOIN {changes[0]} USING ({key_sql}))"
            duplicates = count_duplicate_keys(conn, rows, key)
        return dg.AssetCheckResult(
            passed=duplicates == 0,
            metadata={
                "duplicate_keys": duplicates,
                "key": key_sql,
                "rows_checked": "all" if changes is None else "changed",
            },
        )

    return _check


unique_key_checks = [
    _unique_key_check(name, spec.primary_key) for name, spec in TABLES.items() if spec.primary_key
]


def _reference_check(table: str) -> dg.AssetChecksDefinition:
    links = [r for r in REFERENCES if r[0] == table]

    @warehouse_check(
        asset=raw_asset_key(table),
        name="references_known_rows",
        description="Every "
        + ", ".join(f"{col} points at a row of raw.{parent}" for _, col, parent, _ in links)
        + ".",
        additional_deps=[raw_asset_key(parent) for _, _, parent, _ in links],
    )
    def _check(warehouse: DuckDBResource) -> dg.AssetCheckResult:
        orphans: dict[str, int | str] = {}
        scopes = set()
        with warehouse.get_connection() as conn:
            for _, col, parent, parent_col in links:
                rows = _rows_to_check(conn, table, col, parent, parent_col)
                scopes.add("all" if rows == f"raw.{table}" else "changed")
                orphans[f"unknown_{col}"] = int(
                    conn.execute(
                        f"SELECT count(*) FROM {rows} c ANTI JOIN raw.{parent} p "
                        f"ON c.{col} = p.{parent_col}"
                    ).fetchone()[0]
                )
        passed = sum(int(v) for v in orphans.values()) == 0
        orphans["rows_checked"] = "all" if "all" in scopes else "changed"
        return dg.AssetCheckResult(passed=passed, metadata=orphans)

    return _check


def _rows_to_check(
    conn: duckdb.DuckDBPyConnection, table: str, col: str, parent: str, parent_col: str
) -> str:
    """The child rows a reference check looks at: all, or after loads of changes of both
    tables only the child rows written by the load and those pointing at a deleted parent
    row (no other row's reference can have broken)."""
    child, up = last_changes(conn, table), last_changes(conn, parent)
    if child is None or up is None:
        return f"raw.{table}"
    key = ", ".join(TABLES[table].primary_key)
    return (
        f"(SELECT * FROM raw.{table} SEMI JOIN {child[0]} USING ({key}) UNION "
        f"SELECT * FROM raw.{table} WHERE {col} IN (SELECT {parent_col} FROM {up[1]}))"
    )


reference_checks = [_reference_check(t) for t in sorted({r[0] for r in REFERENCES})]


@warehouse_check(
    asset=raw_asset_key("orders"),
    name="timestamps_in_order",
    description=(
        "Delivery to the customer never precedes purchase (error); approval and hand-over to "
        "the carrier before purchase are counted as a warning (the real data has a few)."
    ),
)
def orders_timestamps_in_order(warehouse: DuckDBResource) -> dg.AssetCheckResult:
    delivered_before_purchase = _scalar(
        warehouse,
        "SELECT count(*) FROM raw.orders "
        "WHERE order_delivered_customer_date < order_purchase_timestamp",
    )
    early_steps = _scalar(
        warehouse,
        "SELECT count(*) FROM raw.orders WHERE order_approved_at < order_purchase_timestamp "
        "OR order_delivered_carrier_date < order_purchase_timestamp",
    )
    if delivered_before_purchase:
        severity, passed = dg.AssetCheckSeverity.ERROR, False
    else:
        severity, passed = dg.AssetCheckSeverity.WARN, early_steps == 0
    return dg.AssetCheckResult(
        passed=passed,
        severity=severity,
        metadata={
            "delivered_before_purchase": delivered_before_purchase,
            "approved_or_shipped_before_purchase": early_steps,
        },
    )
