"""Resources of the code location, configured by the settings (the environment): the same
code runs on a local DuckDB file and SQLite MLflow store, or on a DuckLake warehouse
(catalog in Postgres, Parquet files under a data path) and an MLflow tracking server."""

import dagster as dg

from olist_churn_dagster.defs.ml.resources import MlflowTracking
from olist_churn_dagster.defs.warehouse import warehouse_resources
from olist_churn_dagster.lib.settings import load_settings


@dg.definitions
def resources() -> dg.Definitions:
    settings = load_settings()
    return dg.Definitions(
        resources={
            **warehouse_resources(settings.warehouse, settings.warehouse_data_path),
            "mlflow": MlflowTracking(tracking_uri=settings.mlflow_tracking_uri),
        }
    )
