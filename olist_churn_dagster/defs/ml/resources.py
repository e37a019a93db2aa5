"""MLflow as a Dagster resource: one tracking store and registry (a SQLite file under the
data directory by default, or a tracking server)."""

import dagster as dg
from pydantic import Field

from olist_churn_dagster.lib.ml.tracking import (
    default_artifact_location,
    sqlite_store_path,
)

EXPERIMENT = "olist-seller-churn"


class MlflowTracking(dg.ConfigurableResource):
    """Where runs, artifacts and registered models go. Never MLflow's cwd default."""

    tracking_uri: str = Field(description="MLflow tracking and registry URI.")
    experiment: str = Field(default=EXPERIMENT, description="Experiment for training runs.")
    artifact_location: str = Field(
        default="", description="Artifact root for new experiments; empty: beside the store."
    )

    def ready_uri(self) -> str:
        """The tracking URI, with the folder of a local SQLite store created first."""
        store = sqlite_store_path(self.tracking_uri)
        if store is not None:
            store.parent.mkdir(parents=True, exist_ok=True)
        return self.tracking_uri

    def artifact_root(self) -> str | None:
        return self.artifact_location or default_artifact_location(self.tracking_uri)
