"""Resources of the code location, all pointed at the configured data directory."""

import dagster as dg

from olist_churn_dagster.defs.ml.resources import MlflowTracking
from olist_churn_dagster.defs.warehouse import warehouse_resources
from olist_churn_dagster.lib.settings import load_settings


@dg.definitions
def resources() -> dg.Definitions:
    settings = load_settings()
    return dg.Definitions(
        resources={
            **warehouse_resources(settings.warehouse_path),
            "mlflow": MlflowTracking.under(settings.mlflow_dir),
        }
    )
