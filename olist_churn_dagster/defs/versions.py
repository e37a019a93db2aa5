"""The assets' code versions, from the settings the code location loaded with: after a
change to the code that computes an asset, or to the window or horizon, Dagster marks its
materialized partitions stale (see `lib.versions`)."""

from olist_churn_dagster.defs.settings import churn_settings
from olist_churn_dagster.lib.versions import code_version, feature_code_version

_SETTINGS = churn_settings()
_WINDOW = {
    "window_days": _SETTINGS.feature_window_days,
    "horizon_days": _SETTINGS.churn_horizon_days,
}


def feature_version(family: str) -> str:
    return feature_code_version(family, **_WINDOW)


ABT_VERSION = code_version(
    ["lib.ml.abt", "lib.ml.labels", "lib.ml.rhythm"], **_WINDOW, cohort_day=_SETTINGS.cohort_day
)
BACKTEST_VERSION = code_version(
    ["lib.ml.backtest", "lib.ml.model", "lib.ml.calibration"],
    cutoffs=_SETTINGS.backtest_cutoffs,
)
MODEL_VERSION = code_version(["lib.ml.model", "lib.ml.calibration", "lib.ml.backtest"])
SCORES_VERSION = code_version(
    [
        "lib.ml.scoring",
        "lib.ml.catalogue",
        "lib.ml.rhythm",
        "lib.ml.treeshap",
        "lib.ml.calibration",
    ],
    **_WINDOW,
)
DIGEST_VERSION = code_version(["lib.ml.digest", "lib.ml.scoring"])
