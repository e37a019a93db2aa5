"""`olist-churn prepare`: bring the warehouse to a state worth opening the UI on.

Runs the project's own jobs in process on the configured Dagster instance, so every run
shows in the UI's history like any other, and skips each step that is already done:
raw tables, every feature partition (one single-run backfill), the ABT and a champion
model, and the scores of the most recent reference dates.
"""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from olist_churn_dagster.defs.partitions import registered_dates
from olist_churn_dagster.defs.tags import range_tags
from olist_churn_dagster.lib.ml.tracking import champion_version, sqlite_store_path
from olist_churn_dagster.lib.settings import Settings
from olist_churn_dagster.lib.tables import SCORES_TABLE, feature_table
from olist_churn_dagster.lib.warehouse import open_warehouse, warehouse_exists


def load_definitions() -> dg.Definitions:
    from olist_churn_dagster.definitions import defs

    return defs() if callable(defs) else defs


def _count(settings: Settings, sql: str, params: list) -> int:
    if not warehouse_exists(settings.warehouse):
        return 0
    conn = open_warehouse(settings.warehouse, read_only=True)
    try:
        return int(conn.execute(sql, params).fetchone()[0])
    except Exception:  # a table that is not there yet counts as nothing done
        return 0
    finally:
        conn.close()


def _missing_feature_dates(settings: Settings, keys: list[str]) -> list[str]:
    """Partition keys without feature rows (one backfill covers first to last of them)."""
    if not warehouse_exists(settings.warehouse):
        return keys
    conn = open_warehouse(settings.warehouse, read_only=True)
    try:
        rows = conn.execute(
            f"SELECT DISTINCT reference_date FROM {feature_table('sales')}"
        ).fetchall()
    except Exception:  # no feature table yet
        return keys
    finally:
        conn.close()
    present = {r[0].isoformat() for r in rows}
    return [k for k in keys if k not in present]


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, job_name: str, **kwargs) -> None:
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=instance, raise_on_error=False, **kwargs
    )
    if not result.success:
        raise RuntimeError(f"job {job_name} failed; open its run in the UI for the error")


def prepare(
    settings: Settings, instance: dg.DagsterInstance, log: Callable[[str], None] = print
) -> list[str]:
    """Run whatever of the main pipeline is missing; returns the steps it ran. The raw load
    registers the reference dates, so the later steps read them from the instance."""
    defs = load_definitions()
    done: list[str] = []

    def step(name: str, is_done: Callable[[], bool], job_name: str, **kwargs) -> None:
        if is_done():
            log(f"{name}: already there")
            return
        log(f"{name}: running job {job_name}")
        _run(defs, instance, job_name, **kwargs)
        done.append(name)

    step(
        "raw tables",
        lambda: (
            bool(registered_dates(instance))
            and _count(settings, "SELECT count(*) FROM raw.orders", []) > 0
        ),
        "load_raw_tables",
    )
    keys = registered_dates(instance)
    missing = _missing_feature_dates(settings, keys)
    step(
        f"feature store ({len(missing)} of {len(keys)} reference dates)",
        lambda: not missing,
        "build_feature_store",
        tags=range_tags(missing[0], missing[-1]) if missing else {},
    )
    tracking_uri = settings.mlflow_tracking_uri
    store = sqlite_store_path(tracking_uri)
    step(
        "ABT, backtest and champion model",
        lambda: (
            (store is None or store.exists())
            and champion_version(tracking_uri) is not None
            and _count(settings, "SELECT count(*) FROM ml.backtest", []) > 0
        ),
        "train_churn_model",
    )
    recent = keys[-settings.rescore_days :]
    step(
        f"churn scores ({len(recent)} latest dates)",
        lambda: (
            _count(
                settings,
                f"SELECT count(*) FROM {SCORES_TABLE} WHERE reference_date = ?::DATE",
                [recent[-1]],
            )
            > 0
        ),
        "rescore_with_champion",
        tags=range_tags(recent[0], recent[-1]),
    )
    return done
