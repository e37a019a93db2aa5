"""`olist-churn prepare`: bring the warehouse to a state worth opening the UI on.

Runs in process on the configured Dagster instance, so the runs show in the UI's history
like any other, and skips whatever is already materialized.
"""

from __future__ import annotations

import dagster as dg

from olist_churn_dagster.lib.settings import Settings
from olist_churn_dagster.lib.warehouse import open_warehouse


def _has_table(settings: Settings, schema: str, table: str) -> bool:
    if not settings.warehouse_path.exists():
        return False
    conn = open_warehouse(settings.warehouse_path, read_only=True)
    try:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema = ? AND table_name = ?",
            [schema, table],
        ).fetchone()
        return bool(row and row[0])
    finally:
        conn.close()


def load_definitions() -> dg.Definitions:
    from olist_churn_dagster.definitions import defs

    return defs() if callable(defs) else defs


def prepare(settings: Settings, instance: dg.DagsterInstance) -> list[str]:
    """Materialize the raw tables when the warehouse has none; returns what it ran."""
    defs = load_definitions()
    done: list[str] = []
    if not _has_table(settings, "raw", "orders"):
        result = defs.resolve_job_def("load_raw_tables").execute_in_process(instance=instance)
        if not result.success:
            raise RuntimeError("materializing the raw tables failed; see the run in the UI")
        done.append("raw tables")
    return done
