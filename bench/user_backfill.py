"""The feature backfill as a user launches it: one `dagster asset materialize` over every
reference date, on the instance `make run` sets up (instance/dagster.yaml), next to
Dagster's own floor (six assets that do nothing, same partitions, same instance and CLI).

    uv run python bench/user_backfill.py [--scale 1] [--repeat 1] [--root /tmp/olist-user-backfill]

Splits each run's wall time, from its event log, into compute (asset steps from start to
output, check steps whole), warehouse writes (the IO manager's transaction) and the rest,
which is Dagster's bookkeeping (process start, loading the code location, creating the run
with its planned events, one event and one commit per partition materialized, run start
and end). The feature tables are computed and written in a background thread while
Dagster records the previous table's materializations, so their compute shows only as the
time the step waits for the next table, and their writes not at all. The floor runs with the
project's executor (in process by default), so the two differ only by what the project
does. Each row also gives the CLI process's CPU seconds and its peak resident memory: with
the in-process executor the run executes in that process, so it is the run's peak.
`--repeat N` times N project/floor pairs back to back and prints the median ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FEATURES = "group:feature_store"
FAMILIES = ("sales", "reviews", "customers", "delivery", "payments", "products")
FLOOR = ",".join(f"floor/seller_{family}" for family in FAMILIES)


def cli_env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLIST_CHURN_")}
    env.update(OLIST_CHURN_DATA_DIR=str(data), DAGSTER_HOME=str(data / "dagster_home"))
    return env


def dagster_cli(env: dict, *args: str) -> tuple[float, float, float, float]:
    """Runs the dagster CLI; returns its wall seconds, its CPU seconds (less sensitive than
    wall time to other work on a shared machine), its peak resident memory in GB and the
    clock time it started.

    The child is reaped with `wait4`, whose usage is that child's alone (with whatever it
    started and waited for): `RUSAGE_CHILDREN`'s peak is the largest of every child so
    far, so it would hide a smaller second run behind the first."""
    # Dirty pages of earlier work (the generated data, the raw load, the previous run's
    # warehouse) are flushed first: their writeback would slow this run's SQLite commits.
    os.sync()
    command = [str(REPO / ".venv/bin/dagster"), *args]
    launched, started = time.time(), time.perf_counter()
    child = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, command)
    peak_gb = usage.ru_maxrss * 1024 / 1e9  # KB on Linux
    return wall, usage.ru_utime + usage.ru_stime, peak_gb, launched


def run_split(
    env: dict, wall: float, cpu: float, peak_gb: float, launched: float
) -> dict[str, float]:
    """Where the newest run's wall time went, from its events.

    compute: each asset step's time up to each of its outputs (after the previous output
    was handled), and each check step whole; writes: the IO manager's handling of an
    output up to the first materialization event it is followed by (Dagster logs an
    output's partition materializations after the write, before HANDLED_OUTPUT);
    bookkeeping: the rest, of which `events` is the time spent logging those partition
    materializations and `start` the time before the first step (process start, loading
    the code location, creating the run and its planned events)."""

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    import dagster as dg

    kind = dg.DagsterEventType
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs(limit=1)
        records = instance.get_records_for_run(run.run_id, limit=1_000_000).records
    # Each step is cut into consecutive spans at its events: up to an output (compute: the
    # generator runs, or Dagster waits for it), the output up to its first partition
    # materialization (the write), that one up to HANDLED_OUTPUT (or the step's end when no
    # IO manager handles it: the floor's), the events. A step with several outputs (the
    # feature multi-asset) repeats the cycle, so compute overlapped with the previous
    # output's write and events is not counted twice.
    spans: dict[str, dict[str, float]] = {}  # step -> seconds per span
    materializations = 0
    starts: dict[str, float] = {}
    span: dict[str, tuple[str, float]] = {}  # step -> (current span, when it began)
    checked: dict[str, float] = {}  # check step -> its last evaluation
    last_materialized: dict[str, float] = {}
    ends = {
        "compute": (kind.STEP_OUTPUT,),
        "write": (kind.ASSET_MATERIALIZATION,),
        "events": (kind.HANDLED_OUTPUT, kind.STEP_SUCCESS),
    }
    following = {"compute": "write", "write": "events", "events": "compute"}
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None or event.step_key is None:
            continue
        step, stamp, type_ = event.step_key, record.event_log_entry.timestamp, event.event_type
        materializations += type_ == kind.ASSET_MATERIALIZATION
        if type_ == kind.STEP_START:
            starts[step] = stamp
            span[step] = ("compute", stamp)
            spans[step] = {"compute": 0.0, "write": 0.0, "events": 0.0}
            continue
        if step not in span:
            continue
        current, began = span[step]
        if current == "events" and type_ == kind.STEP_OUTPUT:
            # The next output of a step whose outputs have no IO manager (the feature
            # tables write their own): the events end with the last materialization, the
            # wait for the next output after it is compute.
            spans[step]["events"] += last_materialized[step] - began
            spans[step]["compute"] += stamp - last_materialized[step]
            span[step] = ("write", stamp)
        elif type_ in ends[current]:
            spans[step][current] += stamp - began
            span[step] = (following[current], stamp)
        if type_ == kind.ASSET_MATERIALIZATION:
            last_materialized[step] = stamp
        if type_ == kind.ASSET_CHECK_EVALUATION:
            checked[step] = stamp
    asset_steps = [step for step in spans if step not in checked]
    compute = sum(spans[step]["compute"] for step in asset_steps)
    compute += sum(stamp - starts[step] for step, stamp in checked.items())
    write = sum(spans[step]["write"] for step in asset_steps)
    events = sum(spans[step]["events"] for step in asset_steps)
    first_step = min(starts.values(), default=None)
    return {
        "wall": wall,
        "compute": compute,
        "writes": write,
        "bookkeeping": wall - compute - write,
        "events": events,
        "start": first_step - launched if first_step else 0.0,
        "materializations": materializations,
        "cpu": cpu,
        "peak_gb": peak_gb,
    }


def _row(label: str, split: dict[str, float]) -> None:
    print(
        f"{label:44s} wall {split['wall']:6.1f} s  CPU {split['cpu']:6.1f} s  "
        f"peak {split['peak_gb']:5.2f} GB  "
        f"compute {split['compute']:5.1f} s  "
        f"writes {split['writes']:5.1f} s  bookkeeping {split['bookkeeping']:5.1f} s "
        f"(of which {split['materializations']:,} partition materializations "
        f"{split['events']:.1f} s, before the first step {split['start']:.1f} s)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--root", type=Path, default=Path("/tmp/olist-user-backfill"))
    parser.add_argument("--repeat", type=int, default=1, help="project/floor pairs to time")
    parser.add_argument(
        "--planned-subset",
        action="store_true",
        help="Dagster's DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS for both runs: one "
        "planned event per asset instead of per partition (the UI then shows no partition of "
        "a run as in progress or failed)",
    )
    args = parser.parse_args()

    shutil.rmtree(args.root, ignore_errors=True)
    data = args.root / "data"
    (data / "dagster_home").mkdir(parents=True)
    shutil.copy(REPO / "instance" / "dagster.yaml", data / "dagster_home" / "dagster.yaml")
    env = cli_env(data)
    if args.planned_subset:
        env["DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"] = "1"
    subprocess.run(
        [str(REPO / ".venv/bin/olist-churn"), "generate", str(data / "raw"), "--scale",
         str(args.scale)],
        env=env, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    module = ["-m", "olist_churn_dagster.definitions"]
    dagster_cli(env, "asset", "materialize", *module, "--select", "group:raw")

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    import dagster as dg

    from olist_churn_dagster.defs.partitions import registered_dates

    with dg.DagsterInstance.get() as instance:
        keys = registered_dates(instance)
    span = f"{keys[0]}...{keys[-1]}"
    print(f"scale {args.scale}: {len(keys)} reference dates, one run each, CLI on instance/")

    floor_module = ["-f", str(REPO / "bench" / "trivial_location.py")]
    ratios, cpu_ratios = [], []
    for _ in range(args.repeat):  # back to back, so both see the same load
        load = os.getloadavg()[0]
        run = dagster_cli(env, "asset", "materialize", *module,
                       "--select", FEATURES, "--partition-range", span)  # fmt: skip
        project = run_split(env, *run)
        _row("feature backfill (6 assets)", project)
        run = dagster_cli(env, "asset", "materialize", *floor_module,
                       "--select", FLOOR, "--partition-range", span)  # fmt: skip
        floor = run_split(env, *run)
        _row("Dagster's floor (6 assets that do nothing)", floor)
        ratios.append(project["wall"] / floor["wall"])
        cpu_ratios.append(project["cpu"] / floor["cpu"])
        print(
            f"project over the floor: {ratios[-1]:.2f}x wall, {cpu_ratios[-1]:.2f}x CPU "
            f"({project['wall'] - floor['wall']:+.1f} s: the project's own cost); "
            f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after",
            flush=True,
        )
    if len(ratios) > 1:
        print(
            f"median over {len(ratios)} pairs: {statistics.median(ratios):.2f}x wall, "
            f"{statistics.median(cpu_ratios):.2f}x CPU"
        )


if __name__ == "__main__":
    main()
