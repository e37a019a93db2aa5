"""The daily loop as an operator runs it: a snapshot landing under a real `dg dev`
(sensor on, the instance `make run` sets up) until its scores and risk digest are committed.

    uv run python bench/live_loop.py [--scale 1] [--snapshots 1] [--hold 60]
        [--root /tmp/olist-live-bench]

Generates the demo data at the scale as `make run` does (the export as of 7 days ago, the
whole marketplace in data/feed), runs `olist-churn prepare`, starts `dg dev`, then
replays the feed's days as the walkthrough does, one snapshot at a time: `--snapshots` of
them freely, then one while a reader holds the warehouse file open for `--hold` seconds
(as a notebook would; `--hold 0` leaves it out). Prints, for each, the seconds from the
marker written to the run's sensor launch and to its end (scores and digest committed),
the run's own time, the step retries, the run's status and the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from olist_churn_dagster.lib.ingest.snapshots import MARKER_FILE  # noqa: E402
from olist_churn_dagster_tests.e2e.conftest import environment  # noqa: E402  (the e2e servers' settings)
from olist_churn_dagster_tests.e2e.server import (  # noqa: E402
    DagsterDev,
    GraphQL,
    runs,
    tags_of,
    wait_until,
)

READER = "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
READER += "print('READING', flush=True); time.sleep(float(sys.argv[2]))"

RETRIES = """
query Logs($runId: ID!) { logsForRun(runId: $runId, limit: 5000) {
  ... on EventConnection { events { __typename } } } }
"""


def _cli(env: dict, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run([str(REPO / ".venv/bin/olist-churn"), *args], env=env, check=True, cwd=REPO)
    return time.perf_counter() - started


FEED_DAYS = 7  # as `make run`: the export is as of this many days before the feed's end


def _land(env: dict, data: Path, day: date) -> float:
    """Cut and write the snapshot of `day` from the feed; returns the wall-clock time its
    marker was written (the file's own time: the replay process may take a while to exit)."""
    _cli(env, "replay", str(data / "feed"), "--start", str(day), "--end", str(day))
    return (data / "snapshots" / day.isoformat() / MARKER_FILE).stat().st_mtime


def _wait_run(gql: GraphQL, day: date) -> dict:
    def finished() -> dict | None:
        found = runs(gql, tags={"olist/snapshot": day.isoformat()})
        done = [r for r in found if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
        return done[0] if done else None

    return wait_until(f"the run of snapshot {day}", finished, timeout=900, interval=0.5)


def _report(gql: GraphQL, label: str, run: dict, marker: float) -> float:
    events = gql(RETRIES, {"runId": run["runId"]})["logsForRun"]["events"]
    retries = sum(e["__typename"] == "ExecutionStepUpForRetryEvent" for e in events)
    print(
        f"{label:34s} {run['status']:8s} to launch {run['creationTime'] - marker:6.1f} s  "
        f"to digest committed {run['endTime'] - marker:6.1f} s  "
        f"run {run['endTime'] - run['startTime']:6.1f} s  step retries {retries}  "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    assert tags_of(run)["dagster/partition"]
    return run["endTime"] - marker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--snapshots", type=int, default=1, help="free snapshots to time")
    parser.add_argument("--hold", type=float, default=60.0, help="0: no snapshot under a reader")
    parser.add_argument("--root", type=Path, default=Path("/tmp/olist-live-bench"))
    args = parser.parse_args()

    shutil.rmtree(args.root, ignore_errors=True)
    data = args.root / "data"
    home = data / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(REPO / "instance" / "dagster.yaml", home / "dagster.yaml")  # as `make run` does
    env = environment(data, home)
    if args.snapshots + (args.hold > 0) > FEED_DAYS:
        parser.error(f"the feed holds {FEED_DAYS} days: --snapshots plus the held one")
    seconds = _cli(
        env,
        "generate",
        str(data / "raw"),
        "--feed",
        str(data / "feed"),
        "--feed-days",
        str(FEED_DAYS),
        "--scale",
        str(args.scale),
    )
    print(f"generate scale {args.scale}: {seconds:.1f} s")
    print(f"olist-churn prepare: {_cli(env, 'prepare'):.1f} s", flush=True)

    server = DagsterDev(REPO, env, log_path=args.root / "dagster-dev.log")
    server.start()
    try:
        server.wait_ready(timeout=180)
        gql = GraphQL(server.url)
        first = date.today() - timedelta(days=FEED_DAYS - 1)  # the day after the export's
        latencies = []
        for offset in range(args.snapshots):
            free = first + timedelta(days=offset)
            time.sleep(2.0)  # the previous run's end is settled before the next marker
            marker = _land(env, data, free)
            latencies.append(_report(gql, f"snapshot {free}", _wait_run(gql, free), marker))
        if latencies:
            print(
                f"marker to digest committed, {len(latencies)} free snapshots: median "
                f"{statistics.median(latencies):.1f} s, best {min(latencies):.1f} s",
                flush=True,
            )
        if args.hold <= 0:
            return
        held = first + timedelta(days=args.snapshots)
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, str(data / "warehouse.duckdb"), str(args.hold)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert reader.stdout is not None and reader.stdout.readline().strip() == "READING"
        marker = _land(env, data, held)
        run = _wait_run(gql, held)
        reader.wait()
        _report(gql, f"snapshot {held}, reader {args.hold:.0f} s", run, marker)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
