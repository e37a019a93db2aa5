"""Resources of the code location, all pointed at the configured data directory."""

import dagster as dg

from olist_churn_dagster.defs.warehouse import warehouse_resources
from olist_churn_dagster.lib.settings import load_settings


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=warehouse_resources(load_settings().warehouse_path))
