"""Checks on the stored feature tables (SQL over the warehouse, all partitions)."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from olist_churn_dagster.defs.features.assets import feature_asset_key
from olist_churn_dagster.defs.warehouse import WAREHOUSE_POOL
from olist_churn_dagster.lib.features import FEATURE_FAMILIES
from olist_churn_dagster.lib.warehouse import count_duplicate_keys


def _feature_table_check(family: str) -> dg.AssetChecksDefinition:
    table = f"features.seller_{family}"

    @dg.asset_check(
        asset=feature_asset_key(family),
        name="one_finite_row_per_seller_and_date",
        description="No duplicate (reference_date, seller_id); no NaN or infinite value.",
        pool=WAREHOUSE_POOL,
    )
    def _check(warehouse: DuckDBResource) -> dg.AssetCheckResult:
        with warehouse.get_connection() as conn:
            duplicates = count_duplicate_keys(conn, table, ["reference_date", "seller_id"])
            floats = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                    "'features' AND table_name = ? AND data_type IN ('DOUBLE', 'FLOAT')",
                    [f"seller_{family}"],
                ).fetchall()
            ]
            condition = " OR ".join(f'NOT isfinite("{c}")' for c in floats) or "FALSE"
            non_finite = conn.execute(f"SELECT count(*) FROM {table} WHERE {condition}").fetchone()[
                0
            ]
        return dg.AssetCheckResult(
            passed=duplicates == 0 and non_finite == 0,
            metadata={"duplicate_keys": duplicates, "rows_with_nan_or_inf": non_finite},
        )

    return _check


feature_checks = [_feature_table_check(family) for family in FEATURE_FAMILIES]
