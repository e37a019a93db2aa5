"""Checks on the stored feature tables (SQL over the warehouse, all partitions)."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from olist_churn_dagster.defs.features.assets import feature_asset_key
from olist_churn_dagster.defs.warehouse import warehouse_check
from olist_churn_dagster.lib.features import FEATURE_FAMILIES
from olist_churn_dagster.lib.tables import KEYS, feature_table
from olist_churn_dagster.lib.warehouse import count_duplicate_keys, count_non_finite_rows


def _feature_table_check(family: str) -> dg.AssetChecksDefinition:
    table = feature_table(family)

    @warehouse_check(
        asset=feature_asset_key(family),
        name="one_finite_row_per_seller_and_date",
        description="No duplicate (reference_date, seller_id); no NaN or infinite value.",
    )
    def _check(warehouse: DuckDBResource) -> dg.AssetCheckResult:
        with warehouse.get_connection() as conn:
            duplicates = count_duplicate_keys(conn, table, KEYS)
            non_finite = count_non_finite_rows(conn, table)
        return dg.AssetCheckResult(
            passed=duplicates == 0 and non_finite == 0,
            metadata={"duplicate_keys": duplicates, "rows_with_nan_or_inf": non_finite},
        )

    return _check


feature_checks = [_feature_table_check(family) for family in FEATURE_FAMILIES]
