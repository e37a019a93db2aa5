"""MLflow as a Dagster resource: one tracking store and registry under the data directory."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from olist_churn_dagster.lib.tracking import default_artifact_location

EXPERIMENT = "olist-seller-churn"


class MlflowTracking(dg.ConfigurableResource):
    """Where runs, artifacts and registered models go. Never MLflow's cwd default."""

    tracking_uri: str = Field(description="MLflow tracking and registry URI.")
    experiment: str = Field(default=EXPERIMENT, description="Experiment for training runs.")
    artifact_location: str = Field(
        default="", description="Artifact root for new experiments; empty: beside the store."
    )

    @classmethod
    def under(cls, mlflow_dir: Path) -> "MlflowTracking":
        return cls(tracking_uri=f"sqlite:///{mlflow_dir / 'mlflow.db'}")

    def ready_uri(self) -> str:
        """The tracking URI, with the folder of a local SQLite store created first."""
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        return self.tracking_uri

    def artifact_root(self) -> str | None:
        return self.artifact_location or default_artifact_location(self.tracking_uri)
