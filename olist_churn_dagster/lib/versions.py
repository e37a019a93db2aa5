"""Code versions of the assets: what their rows depend on, so that Dagster marks the
materialized partitions stale when it changes (a feature family's code, the window); and
what a training run records to be reproduced (the code's commit, the catalogue's hash)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import subprocess
from collections.abc import Iterable, Sequence
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


def git_commit(folder: Path | None = None) -> str | None:
    """The commit checked out where the code lives (`folder`, by default the package's),
    with `-dirty` when tracked files differ from it; None without git, or outside a
    repository (an installed package): a training run records it when there is one."""
    cwd = folder or Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    changed = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}-dirty" if changed else commit


def catalogue_hash(specs: Iterable[object]) -> str:
    """SHA-256 of a feature catalogue (dataclass entries, in order, every field): two
    models trained on the same catalogue hash alike; a renamed, added or redefined
    feature changes it."""
    entries = [dataclasses.asdict(spec) for spec in specs]  # type: ignore[call-overload]
    text = json.dumps(entries, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
