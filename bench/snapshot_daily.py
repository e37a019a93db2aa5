"""The daily snapshot's run alone, at one scale: marker written to scores committed.

    uv run python bench/snapshot_daily.py setup --scale 30 --root /tmp/olist-daily [--raw DIR]
    uv run python bench/snapshot_daily.py measure --root /tmp/olist-daily --label incremental

`setup` prepares `ROOT/template`: the generated data (or `--raw`, linked and only read),
the raw tables, the feature partitions of the ABT's monthly cohorts, the ABT, backtest and
champion model: what a daily run needs, without the whole feature backfill that
`bench/pipeline.py` times too (or, with `--model-from`, another setup's champion instead
of training one here). `measure` copies the template and runs the stage of
`bench/pipeline.py` (`daily_snapshot_to_scores`): yesterday's snapshot untimed, today's
timed, in process. Put another checkout first on PYTHONPATH to time its code on the same
data, back to back. Prints one line: seconds (wall, and CPU of all the process's threads),
scores written, peak RSS, load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from datetime import date
from pathlib import Path

from pipeline import PeakMemory, daily_snapshot_to_scores


def setup(root: Path, scale: float, raw: Path | None, model_from: Path | None) -> None:
    template = root / "template"
    shutil.rmtree(template, ignore_errors=True)
    template.mkdir(parents=True)
    os.environ["OLIST_CHURN_DATA_DIR"] = str(template)
    if raw:
        (template / "raw").symlink_to(raw.resolve())
    else:
        from olist_churn_dagster.generator.marketplace import generate_dataset

        generate_dataset(template / "raw", scale=scale)

    import dagster as dg

    from olist_churn_dagster.bootstrap import load_definitions
    from olist_churn_dagster.defs.ml.assets import mature_cohorts
    from olist_churn_dagster.defs.partitions import registered_dates
    from olist_churn_dagster.defs.settings import churn_settings
    from olist_churn_dagster.lib.ingest.loader import purchase_date_range

    defs = load_definitions()
    instance = dg.DagsterInstance.ephemeral()

    def run(job: str, **kwargs) -> None:
        started = time.perf_counter()
        result = defs.resolve_job_def(job).execute_in_process(instance=instance, **kwargs)
        assert result.success, job
        print(f"  {job} {kwargs.get('partition_key', '')}: {time.perf_counter() - started:.1f} s")

    run("load_raw_tables")
    keys = registered_dates(instance)
    if model_from:  # the MLflow store of another template: its champion scores this data
        shutil.copytree(model_from / "template" / "mlflow", template / "mlflow")
        _copy_abt(model_from / "template" / "warehouse.duckdb", template / "warehouse.duckdb")
    else:
        settings = churn_settings()
        cohorts = mature_cohorts(
            keys,
            purchase_date_range(template / "raw")[1],
            horizon_days=settings.churn_horizon_days,
            cohort_day=settings.cohort_day,
        )
        for cohort in cohorts:
            run("build_feature_store", partition_key=cohort.isoformat())
        run("train_churn_model")
    (template / "bench.json").write_text(json.dumps({"day": keys[-1], "scale": scale}))


def _copy_abt(source: Path, target: Path) -> None:
    """The other setup's ABT too: the score drift check compares the scores' features
    with the ABT the champion was trained on."""
    import duckdb

    from olist_churn_dagster.lib.tables import ABT_TABLE

    with duckdb.connect(str(target)) as conn:
        conn.execute(f"ATTACH '{source}' AS other (READ_ONLY)")
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {ABT_TABLE.split('.')[0]}")
        conn.execute(f"CREATE OR REPLACE TABLE {ABT_TABLE} AS SELECT * FROM other.{ABT_TABLE}")


def measure(root: Path, label: str) -> None:
    template, data = root / "template", root / f"run-{label}"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(template, data, symlinks=True)
    os.environ["OLIST_CHURN_DATA_DIR"] = str(data)
    info = json.loads((data / "bench.json").read_text())

    import olist_churn_dagster
    from olist_churn_dagster.bootstrap import load_definitions

    stage = daily_snapshot_to_scores(
        load_definitions(), data, data / "raw", date.fromisoformat(info["day"])
    )
    memory = PeakMemory()
    memory.take()
    load = os.getloadavg()[0]
    started, cpu = time.perf_counter(), time.process_time()
    rows = stage()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(
        f"scale {info['scale']:g} {label}: snapshot to scores {seconds:.1f} s "
        f"({cpu:.1f} CPU-s, all threads), {rows} scores, "
        f"peak {memory.take():.2f} GB, load average {load:.1f} -> {os.getloadavg()[0]:.1f} "
        f"(code {Path(olist_churn_dagster.__file__).parent.parent})",
        flush=True,
    )
    shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["setup", "measure"])
    parser.add_argument("--root", type=Path, default=Path("/tmp/olist-daily"))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--raw", type=Path, help="use these files instead of generating")
    parser.add_argument("--label", default="this-checkout")
    parser.add_argument(
        "--model-from",
        type=Path,
        help="root of another setup whose champion model to use (no training here)",
    )
    args = parser.parse_args()
    if args.step == "setup":
        setup(args.root, args.scale, args.raw, args.model_from)
    else:
        measure(args.root, args.label)


if __name__ == "__main__":
    main()
