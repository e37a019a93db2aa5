"""Resources of the code location, configured by the settings (the environment): the same
code runs on a local DuckDB file and SQLite MLflow store, or on a server warehouse and an
MLflow tracking server."""

import dagster as dg

from olist_churn_dagster.defs.ml.resources import MlflowTracking
from olist_churn_dagster.defs.warehouse import warehouse_resources
from olist_churn_dagster.lib.settings import load_settings


@dg.definitions
def resources() -> dg.Definitions:
    settings = load_settings()
    return dg.Definitions(
        resources={
            **warehouse_resources(settings.warehouse),
            "mlflow": MlflowTracking(tracking_uri=settings.mlflow_tracking_uri),
        }
    )
