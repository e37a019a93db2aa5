"""Names of the warehouse tables and the key of the seller tables, defined once.

A table `schema.name` is also its Dagster asset key (path `[schema, name]`): the IO
manager stores an asset in the table its key names.
"""

from __future__ import annotations

# One row per seller and reference date: the key of the feature tables, ABT and scores.
KEYS = ["reference_date", "seller_id"]

RAW_SCHEMA = "raw"
FEATURE_SCHEMA = "features"
ABT_TABLE = "ml.abt"
SCORES_TABLE = "ml.churn_scores"
RISK_DIGEST_TABLE = "ml.risk_digest"


def feature_table(family: str) -> str:
    """A feature family's qualified table: `features.seller_{family}`."""
    return f"{FEATURE_SCHEMA}.seller_{family}"
