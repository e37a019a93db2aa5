"""Checks on the stored feature tables (SQL over the warehouse): in a partitioned run, the
dates it wrote; in a run of the checks alone, every date.

The key holds the reference date, so a duplicate lies within one date, and a non-finite
value within one row: a run changes only its own dates, and every other date was checked
by the run that wrote it. Checking all of them in each run made a daily run's checks grow
with the history kept, until they took a large share of the run; the run's own dates
cost little.

The six checks are one step (a multi-asset check) rather than six: a run that builds the
feature store, a backfill or a snapshot's daily run, evaluates them on one connection and
records one step's events and one pool slot, not six. Each check still reports on its own
table, and a run that builds some of the tables evaluates only their checks."""

from datetime import date

import dagster as dg
from dagster_duckdb import DuckDBResource

from olist_churn_dagster.defs.features.assets import feature_asset_key
from olist_churn_dagster.defs.warehouse import WAREHOUSE_POOL
from olist_churn_dagster.lib.features import FEATURE_FAMILIES
from olist_churn_dagster.lib.features.writer import PARTITION_COLUMN
from olist_churn_dagster.lib.tables import KEYS, feature_table
from olist_churn_dagster.lib.warehouse import (
    count_duplicate_keys,
    count_non_finite_rows,
    sql_text,
)

CHECK_NAME = "one_finite_row_per_seller_and_date"
FAMILY_OF_CHECK = {
    dg.AssetCheckKey(feature_asset_key(family), CHECK_NAME): family for family in FEATURE_FAMILIES
}


@dg.multi_asset_check(
    name="feature_table_checks",
    specs=[
        dg.AssetCheckSpec(
            CHECK_NAME,
            asset=feature_asset_key(family),
            description="No duplicate (reference_date, seller_id); no NaN or infinite value.",
        )
        for family in FEATURE_FAMILIES
    ],
    can_subset=True,
    pool=WAREHOUSE_POOL,
)
def feature_table_checks(context: dg.AssetCheckExecutionContext, warehouse: DuckDBResource):
    dates = run_dates(context)
    where = (
        "TRUE"
        if dates is None
        else f"{PARTITION_COLUMN} BETWEEN {sql_text(str(dates[0]))}::DATE "
        f"AND {sql_text(str(dates[1]))}::DATE"
    )
    checked = "all" if dates is None else f"{dates[0]} .. {dates[1]}"
    with warehouse.get_connection() as conn:
        for key in sorted(context.selected_asset_check_keys, key=lambda k: k.to_user_string()):
            table = feature_table(FAMILY_OF_CHECK[key])
            duplicates = count_duplicate_keys(conn, table, KEYS, where)
            non_finite = count_non_finite_rows(conn, table, where)
            yield dg.AssetCheckResult(
                asset_key=key.asset_key,
                check_name=key.name,
                passed=duplicates == 0 and non_finite == 0,
                metadata={
                    "duplicate_keys": duplicates,
                    "rows_with_nan_or_inf": non_finite,
                    "dates_checked": checked,
                },
            )


def run_dates(context: dg.AssetCheckExecutionContext) -> tuple[date, date] | None:
    """The first and last reference date of the run's partition or range; None for a run
    without one (the checks launched alone), which checks every date."""
    if not (context.has_partition_key or context.has_partition_key_range):
        return None
    keys = context.partition_key_range
    return date.fromisoformat(keys.start), date.fromisoformat(keys.end)
