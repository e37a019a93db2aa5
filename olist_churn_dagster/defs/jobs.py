"""Jobs: the named units an operator launches, schedules and sensors target."""

import dagster as dg

from olist_churn_dagster.defs.ml.assets import ABT_KEY, BACKTEST_KEY, MODEL_KEY, SCORES_KEY
from olist_churn_dagster.defs.ml.digest import DIGEST_KEY
from olist_churn_dagster.defs.ml.monitoring import MONITORING_KEY
from olist_churn_dagster.defs.partitions import reference_date_partitions

RAW = dg.AssetSelection.groups("raw")
FEATURES = dg.AssetSelection.groups("feature_store")
# The scores, then what reads them: the digest of what changed and the monitoring.
SCORES = dg.AssetSelection.assets(SCORES_KEY, DIGEST_KEY, MONITORING_KEY)

load_raw_tables_job = dg.define_asset_job(
    name="load_raw_tables",
    selection=RAW,
    description="Load and validate the source files into the raw schema.",
)

feature_store_job = dg.define_asset_job(
    name="build_feature_store",
    selection=FEATURES,
    partitions_def=reference_date_partitions,
    description="The six feature tables for the selected reference dates (one run per range).",
)

training_job = dg.define_asset_job(
    name="train_churn_model",
    selection=dg.AssetSelection.assets(ABT_KEY, BACKTEST_KEY, MODEL_KEY),
    description="Rebuild the ABT from the feature store, train, log to MLflow, gate the champion.",
)

scoring_job = dg.define_asset_job(
    name="score_sellers",
    selection=FEATURES | SCORES,
    partitions_def=reference_date_partitions,
    description="Features, churn scores and risk digest for the selected reference dates.",
)

rescore_job = dg.define_asset_job(
    name="rescore_with_champion",
    selection=SCORES,
    partitions_def=reference_date_partitions,
    description="Churn scores and risk digest only (features already there), e.g. after a "
    "new champion.",
)

snapshot_job = dg.define_asset_job(
    name="load_snapshot",
    selection=RAW | FEATURES | SCORES,
    partitions_def=reference_date_partitions,
    description="Refresh the raw tables from one snapshot, then that date's features, scores "
    "and risk digest.",
)
