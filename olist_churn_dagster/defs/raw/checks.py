"""Checks on the raw tables as stored in the warehouse (SQL, nothing loaded into memory)."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from olist_churn_dagster.defs.raw.assets import raw_asset_key
from olist_churn_dagster.defs.warehouse import warehouse_check
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
            duplicates = count_duplicate_keys(conn, f"raw.{table}", key)
        return dg.AssetCheckResult(
            passed=duplicates == 0, metadata={"duplicate_keys": duplicates, "key": key_sql}
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
        orphans = {
            f"unknown_{col}": _scalar(
                warehouse,
                f"SELECT count(*) FROM raw.{table} c ANTI JOIN raw.{parent} p "
                f"ON c.{col} = p.{parent_col}",
            )
            for _, col, parent, parent_col in links
        }
        return dg.AssetCheckResult(passed=sum(orphans.values()) == 0, metadata=orphans)

    return _check


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
