"""Code versions of the assets: what their rows depend on, so that Dagster marks the
materialized partitions stale when it changes (a feature family's code, the window)."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path

PACKAGE = "olist_churn_dagster"


def code_version(modules: Sequence[str], **settings: object) -> str:
    """The settings as they read (`window_days=180,...`) and a hash of the source of the
    modules that compute the rows (names under the package, e.g. `lib.ml.scoring`). The
    modules are found, not imported: the code location loads without the ML libraries."""
    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(f"{PACKAGE}.{name}")
        if spec is None or spec.origin is None:
            raise ValueError(f"no module {PACKAGE}.{name} to version")
        digest.update(Path(spec.origin).read_bytes())
    shown = [f"{key}={settings[key]}" for key in sorted(settings)]
    return ",".join([*shown, f"code={digest.hexdigest()[:12]}"])


def feature_code_version(family: str, *, window_days: int, horizon_days: int) -> str:
    """A feature table's version: its family's plan, the engine and the one-date path that
    compute it, and the window and horizon it is computed with."""
    modules = ["lib.features", "lib.features.engine", "lib.features.incremental"]
    modules += ["lib.features.families.common", f"lib.features.families.{family}", "lib.sales"]
    return code_version(modules, window_days=window_days, horizon_days=horizon_days)
