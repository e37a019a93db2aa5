"""Dagster's own floor for a feature backfill: six assets that do nothing, on the same
reference-date partitions (dynamic, single-run backfill) and with the same executor as the
project's code location, for `bench/user_backfill.py`."""

import dagster as dg

from olist_churn_dagster.definitions import EXECUTOR_DEFS
from olist_churn_dagster.defs.partitions import reference_date_partitions
from olist_churn_dagster.lib.settings import load_settings


def _trivial(name: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=name,
        key_prefix="floor",
        partitions_def=reference_date_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def _asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"partitions": len(context.partition_keys)})

    return _asset


defs = dg.Definitions(
    assets=[
        _trivial(f"seller_{family}")
        for family in ("sales", "reviews", "customers", "delivery", "payments", "products")
    ],
    executor=EXECUTOR_DEFS[load_settings().executor],
)
