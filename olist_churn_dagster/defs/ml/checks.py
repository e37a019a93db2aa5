"""Checks on the ABT: keys, label maturity, and features equal to an as-of recomputation."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from olist_churn_dagster.defs.ml.assets import ABT_KEY
from olist_churn_dagster.defs.settings import ChurnSettings
from olist_churn_dagster.defs.warehouse import warehouse_check
from olist_churn_dagster.lib.features.writer import FAMILY_SOURCES
from olist_churn_dagster.lib.markdown import frame_to_markdown
from olist_churn_dagster.lib.ml.consistency import feature_mismatches, recompute_from_snapshot
from olist_churn_dagster.lib.tables import ABT_TABLE, KEYS, RAW_SCHEMA
from olist_churn_dagster.lib.warehouse import count_duplicate_keys, read_tables

AUDIT_SELLERS = 200


@warehouse_check(
    asset=ABT_KEY,
    name="one_row_per_seller_and_cohort",
    description="No duplicate (reference_date, seller_id) in the ABT.",
)
def abt_unique_rows(warehouse: DuckDBResource) -> dg.AssetCheckResult:
    with warehouse.get_connection() as conn:
        duplicates = count_duplicate_keys(conn, ABT_TABLE, KEYS)
    return dg.AssetCheckResult(passed=duplicates == 0, metadata={"duplicate_keys": duplicates})


@warehouse_check(
    asset=ABT_KEY,
    name="labels_mature",
    description="Every label's 45-day mark lies before the last purchase in the data.",
)
def abt_labels_mature(warehouse: DuckDBResource, settings: ChurnSettings) -> dg.AssetCheckResult:
    horizon = settings.churn_horizon_days
    with warehouse.get_connection() as conn:
        immature = conn.execute(
            f"SELECT count(*) FROM {ABT_TABLE} WHERE (reference_date + ?::INTEGER - 1)::TIMESTAMP "
            ">= (SELECT max(order_purchase_timestamp) FROM raw.orders)",
            [horizon],
        ).fetchone()[0]
    return dg.AssetCheckResult(passed=immature == 0, metadata={"immature_rows": immature})


@warehouse_check(
    asset=ABT_KEY,
    name="features_match_as_of_snapshot",
    description=f"For up to {AUDIT_SELLERS} sellers of the latest cohort, every feature "
    "equals its recomputation from an as-of snapshot cut of the raw tables.",
)
def abt_matches_snapshot(warehouse: DuckDBResource, settings: ChurnSettings) -> dg.AssetCheckResult:
    tables = sorted({t for sources in FAMILY_SOURCES.values() for t in sources})
    with warehouse.get_connection() as conn:
        day = conn.execute(f"SELECT max(reference_date) FROM {ABT_TABLE}").fetchone()[0]
        stored = conn.execute(
            f"SELECT * EXCLUDE (churned) FROM {ABT_TABLE} WHERE reference_date = ? "
            "ORDER BY hash(seller_id) LIMIT ?",
            [day, AUDIT_SELLERS],
        ).pl()
        raw = read_tables(conn, RAW_SCHEMA, tables)
    recomputed = recompute_from_snapshot(
        raw,
        day,
        window_days=settings.feature_window_days,
        horizon_days=settings.churn_horizon_days,
    )
    mismatches = feature_mismatches(stored, recomputed)
    return dg.AssetCheckResult(
        passed=mismatches.height == 0,
        metadata={
            "cohort": str(day),
            "sellers_checked": stored.height,
            "values_checked": stored.height * (stored.width - 2),
            "mismatches": mismatches.height,
            "examples": dg.MetadataValue.md(frame_to_markdown(mismatches.head(10)))
            if mismatches.height
            else dg.MetadataValue.md("none"),
        },
    )
