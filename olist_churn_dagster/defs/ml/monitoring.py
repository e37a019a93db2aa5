"""Monitoring: feature drift of the scored population and realized performance of past
scores once their labels have matured."""

from datetime import timedelta

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from olist_churn_dagster.defs.ml.assets import ABT_KEY, SCORES_KEY
from olist_churn_dagster.defs.raw.assets import raw_asset_key
from olist_churn_dagster.defs.settings import ChurnSettings
from olist_churn_dagster.defs.warehouse import WAREHOUSE_POOL
from olist_churn_dagster.lib.features.store import read_feature_tables
from olist_churn_dagster.lib.markdown import frame_to_markdown, png_markdown
from olist_churn_dagster.lib.ml.abt import feature_columns
from olist_churn_dagster.lib.ml.labels import churn_labels
from olist_churn_dagster.lib.ml.monitoring import (
    PSI_WARN,
    drifted,
    performance_figure,
    population_stability,
    realized_performance,
)
from olist_churn_dagster.lib.ml.rhythm import model_frame
from olist_churn_dagster.lib.tables import ABT_TABLE, KEYS, RAW_SCHEMA, SCORES_TABLE

MONITORING_KEY = dg.AssetKey(["ml", "model_monitoring"])


@dg.asset_check(
    asset=SCORES_KEY,
    name="feature_drift_psi",
    description=f"PSI of every model feature, newest scored date against the ABT; warns "
    f"above {PSI_WARN}.",
    additional_deps=[ABT_KEY],
    pool=WAREHOUSE_POOL,
)
def scores_feature_drift(warehouse: DuckDBResource, settings: ChurnSettings) -> dg.AssetCheckResult:
    with warehouse.get_connection() as conn:
        day = conn.execute(f"SELECT max(reference_date) FROM {SCORES_TABLE}").fetchone()[0]
        reference = conn.execute(f"SELECT * FROM {ABT_TABLE}").pl()
        current = model_frame(
            read_feature_tables(conn, [day]),
            horizon_days=settings.churn_horizon_days,
            window_days=settings.feature_window_days,
        )
    psi = population_stability(reference, current, feature_columns(reference))
    worst = drifted(psi)
    return dg.AssetCheckResult(
        passed=worst.height == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "scored_date": str(day),
            "features": psi.height,
            "drifted_features": worst.height,
            "max_psi": float(psi.get_column("psi").max() or 0.0),
            "drifted": dg.MetadataValue.md(
                frame_to_markdown(worst.select("feature", "psi"), max_rows=20)
                if worst.height
                else "none"
            ),
        },
    )


@dg.asset(
    key=MONITORING_KEY,
    group_name="scoring",
    description="Realized performance of past scores: ROC AUC and top-decile precision "
    "per reference date whose labels have matured.",
    deps=[SCORES_KEY, raw_asset_key("orders"), raw_asset_key("order_items")],
    kinds={"duckdb", "polars"},
    pool=WAREHOUSE_POOL,
)
def model_monitoring(
    context: dg.AssetExecutionContext, warehouse: DuckDBResource, settings: ChurnSettings
) -> pl.DataFrame:
    horizon_days = settings.churn_horizon_days
    with warehouse.get_connection() as conn:
        scores = conn.execute(
            f"SELECT reference_date, seller_id, churn_probability FROM {SCORES_TABLE}"
        ).pl()
        # Only the columns and rows labels read: a scored seller is active, so its last
        # sale before D is at most the horizon before D, and no sale before the first
        # scored date minus the horizon changes a label; the latest purchase is kept.
        first = scores.get_column("reference_date").min()
        since = "TRUE" if first is None else "order_purchase_timestamp >= ?"
        params = [] if first is None else [first - timedelta(days=horizon_days)]
        orders_sql = (
            "SELECT order_id, order_status, order_purchase_timestamp "
            f"FROM {RAW_SCHEMA}.orders WHERE {since}"
        )
        orders = conn.execute(orders_sql, params).pl()
        items = conn.execute(
            f"SELECT order_id, seller_id FROM {RAW_SCHEMA}.order_items "
            f"SEMI JOIN ({orders_sql}) USING (order_id)",
            params,
        ).pl()
    labels = churn_labels(orders, items, scores.select(KEYS), horizon_days=horizon_days)
    table = realized_performance(scores, labels)
    context.add_output_metadata(
        {
            "scored_dates": scores.get_column("reference_date").n_unique(),
            "matured_dates": table.height,
            "mean_roc_auc": float(table.get_column("roc_auc").mean() or 0.0)
            if table.height
            else dg.MetadataValue.null(),
            "by_date": dg.MetadataValue.md(frame_to_markdown(table, max_rows=40)),
            "plot": dg.MetadataValue.md(png_markdown({"realized": performance_figure(table)})),
        }
    )
    return table
