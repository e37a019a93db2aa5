"""The feature backfill as a user launches it: one `dagster asset materialize` over every
reference date, on the instance `make run` sets up (the repository's dagster.yaml), next to
Dagster's own floor (six assets that do nothing, same partitions, same instance and CLI).

    uv run python bench/user_backfill.py [--scale 1] [--root /tmp/olist-user-backfill]

Splits each run's wall time, from its event log, into compute (step start to its output),
warehouse writes (output to handled output: the IO manager's transaction) and the rest,
which is Dagster's bookkeeping (process start, loading the code location, one event and
one commit per partition materialized, run start and end). A feature asset's later
batches are computed while they are written (they stream into one transaction), so part
of its compute counts as writes.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FEATURES = "group:feature_store"
FAMILIES = ("sales", "reviews", "customers", "delivery", "payments", "products")
FLOOR = ",".join(f"floor/seller_{family}" for family in FAMILIES)


def _env(data: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("OLIST_CHURN_")}
    env.update(OLIST_CHURN_DATA_DIR=str(data), DAGSTER_HOME=str(data / "dagster_home"))
    return env


def _dagster(env: dict, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [str(REPO / ".venv/bin/dagster"), *args],
        env=env,
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def _split(env: dict, wall: float) -> dict[str, float]:
    """Compute, write and bookkeeping seconds of the newest run, from its events."""
    import os

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs(limit=1)
        records = instance.get_records_for_run(run.run_id, limit=1_000_000).records
    starts: dict[str, float] = {}
    outputs: dict[str, float] = {}
    compute = write = 0.0
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None or event.step_key is None:
            continue
        stamp = record.event_log_entry.timestamp
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts[event.step_key] = stamp
        elif event.event_type == dg.DagsterEventType.STEP_OUTPUT:
            outputs[event.step_key] = stamp
            compute += stamp - starts.pop(event.step_key, stamp)
        elif event.event_type == dg.DagsterEventType.HANDLED_OUTPUT:
            write += stamp - outputs.pop(event.step_key, stamp)
    return {
        "wall": wall,
        "compute": compute,
        "writes": write,
        "bookkeeping": wall - compute - write,
    }


def _row(label: str, split: dict[str, float]) -> None:
    print(
        f"{label:44s} wall {split['wall']:7.1f} s  compute {split['compute']:6.1f} s  "
        f"writes {split['writes']:6.1f} s  bookkeeping {split['bookkeeping']:6.1f} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--root", type=Path, default=Path("/tmp/olist-user-backfill"))
    args = parser.parse_args()

    shutil.rmtree(args.root, ignore_errors=True)
    data = args.root / "data"
    (data / "dagster_home").mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", data / "dagster_home" / "dagster.yaml")
    env = _env(data)
    subprocess.run(
        [str(REPO / ".venv/bin/olist-churn"), "generate", str(data / "raw"), "--scale",
         str(args.scale)],
        env=env, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    module = ["-m", "olist_churn_dagster.definitions"]
    _dagster(env, "asset", "materialize", *module, "--select", "group:raw")

    import os

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    import dagster as dg

    from olist_churn_dagster.defs.partitions import registered_dates

    with dg.DagsterInstance.get() as instance:
        keys = registered_dates(instance)
    span = f"{keys[0]}...{keys[-1]}"
    print(f"scale {args.scale}: {len(keys)} reference dates, one run each, CLI on dagster.yaml")

    wall = _dagster(env, "asset", "materialize", *module, "--select", FEATURES,
                    "--partition-range", span)  # fmt: skip
    project = _split(env, wall)
    _row("feature backfill (6 assets)", project)
    floor_module = ["-f", str(REPO / "bench" / "trivial_location.py")]
    wall = _dagster(env, "asset", "materialize", *floor_module, "--select", FLOOR,
                    "--partition-range", span)  # fmt: skip
    floor = _split(env, wall)
    _row("Dagster's floor (6 assets that do nothing)", floor)
    print(
        f"project over the floor: {project['wall'] / floor['wall']:.2f}x "
        f"({project['wall'] - floor['wall']:+.1f} s: the project's own cost)\n"
    )


if __name__ == "__main__":
    main()
