"""Feature-store benchmark: a full backfill through Dagster against a per-date loop.

    uv run python bench/features.py [--scales 1 10] [--root /tmp/olist-bench]

For each scale (in a child process, so peak memory is that scale's alone) it generates the
dataset once (cached under --root), loads the raw tables, then times
  (a) every daily partition of the six feature tables as one Dagster run (in process, real
      DuckDB IO manager, one vectorised pass over all dates), and
  (b) the same tables computed one date at a time with the same core functions, timed on
      a spread sample of dates (--loop-sample, default 30; 0 = every date) and
      extrapolated to all dates (marked * when sampled).
Prints one table row per scale.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from datetime import date
from pathlib import Path

from scale_child import run_scale_child, scale_result

HEADER = (
    f"{'scale':>5} {'raw_s':>6} {'dates':>6} {'rows':>11} {'backfill_s':>10} {'dates/s':>8} "
    f"{'loop_s':>9} {'loop_dates':>10} {'ratio b/a':>9} {'peak_GB':>8}"
)


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _dataset(root: Path, scale: float) -> Path:
    from olist_churn_dagster.generator.marketplace import generate_dataset

    raw = root / f"scale-{scale:g}" / "raw"
    if not (raw / "olist_orders_dataset.csv").exists():
        generate_dataset(raw, scale=scale, seed=42)
    return raw


def run_one(root: Path, scale: float, loop_sample: int) -> dict:
    raw = _dataset(root, scale)
    data_dir = raw.parent
    (data_dir / "warehouse.duckdb").unlink(missing_ok=True)
    os.environ["OLIST_CHURN_DATA_DIR"] = str(data_dir)

    import dagster as dg

    from olist_churn_dagster.bootstrap import load_definitions
    from olist_churn_dagster.defs.partitions import registered_dates
    from olist_churn_dagster.defs.tags import range_tags
    from olist_churn_dagster.lib.features import (
        FEATURE_FAMILIES,
        compute_features,
        source_tables,
    )
    from olist_churn_dagster.lib.settings import load_settings
    from olist_churn_dagster.lib.tables import RAW_SCHEMA, feature_table
    from olist_churn_dagster.lib.warehouse import open_warehouse, read_tables

    defs = load_definitions()
    instance = dg.DagsterInstance.ephemeral()
    started = time.perf_counter()
    assert defs.resolve_job_def("load_raw_tables").execute_in_process(instance=instance).success
    raw_load_s = time.perf_counter() - started

    job = defs.resolve_job_def("build_feature_store")
    keys = registered_dates(instance)
    started = time.perf_counter()
    result = job.execute_in_process(
        instance=instance,
        tags=range_tags(keys[0], keys[-1]),
    )
    backfill_s = time.perf_counter() - started
    assert result.success

    conn = open_warehouse(load_settings().warehouse, read_only=True)
    rows = sum(
        conn.execute(f"SELECT count(*) FROM {feature_table(f)}").fetchone()[0]
        for f in FEATURE_FAMILIES
    )
    needed = {"orders", "order_items"}.union(*(source_tables(f) for f in FEATURE_FAMILIES))
    raw_tables = read_tables(conn, RAW_SCHEMA, sorted(needed))
    conn.close()

    dates = [date.fromisoformat(k) for k in keys]
    step = max(1, len(dates) // loop_sample) if loop_sample else 1
    sample = dates[::step]
    settings = load_settings()
    started = time.perf_counter()
    for day in sample:  # the slow way on purpose: one date at a time
        for family in FEATURE_FAMILIES:
            compute_features(
                family,
                raw_tables,
                [day],
                window_days=settings.feature_window_days,
                horizon_days=settings.churn_horizon_days,
            )
    loop_s = (time.perf_counter() - started) * len(dates) / len(sample)
    return {
        "scale": scale,
        "raw_load_s": raw_load_s,
        "dates": len(dates),
        "rows": rows,
        "backfill_s": backfill_s,
        "loop_s": loop_s,
        "loop_dates": len(sample),
        "peak_gb": _peak_gb(),
    }


def _format(r: dict) -> str:
    loop_dates = f"{r['loop_dates']}" + ("" if r["loop_dates"] == r["dates"] else "*")
    return (
        f"{r['scale']:>5g} {r['raw_load_s']:>6.1f} {r['dates']:>6} {r['rows']:>11,} "
        f"{r['backfill_s']:>10.1f} "
        f"{r['dates'] / r['backfill_s']:>8.1f} {r['loop_s']:>9.1f} {loop_dates:>10} "
        f"{r['loop_s'] / r['backfill_s']:>9.1f} {r['peak_gb']:>8.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/olist-bench"))
    parser.add_argument("--loop-sample", type=int, default=0, help="dates timed in (b); 0: all")
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_one(args.root, args.child, args.loop_sample)))
        return
    print(f"feature-store benchmark, {date.today()} on {os.cpu_count()} cores")
    print(HEADER)
    for scale in args.scales:
        sample = args.loop_sample or 30
        out = run_scale_child(
            __file__, scale, "--root", str(args.root), "--loop-sample", str(sample)
        )
        print(_format(scale_result(out)), flush=True)
    print("* loop timed on a spread sample of dates and extrapolated to all dates")


if __name__ == "__main__":
    main()
