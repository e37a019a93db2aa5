"""Resources of the code location, configured by the settings (the environment): the same
code runs on a local DuckDB file and SQLite MLflow store, or on a DuckLake warehouse
(catalog in Postgres, Parquet files under a data path) and an MLflow tracking server. The
settings themselves are the `settings` resource."""

import dagster as dg

from olist_churn_dagster.defs.ml.resources import MlflowTracking
from olist_churn_dagster.defs.settings import churn_settings
from olist_churn_dagster.defs.warehouse import warehouse_resources


@dg.definitions
def resources() -> dg.Definitions:
    settings = churn_settings()
    return dg.Definitions(
        resources={
            **warehouse_resources(settings.warehouse, settings.warehouse_data_path, settings),
            "mlflow": MlflowTracking(tracking_uri=settings.mlflow_tracking_uri),
            "settings": settings,
        }
    )
