"""The feature backfill on the deployed stack, launched as a user launches it from the UI,
beside Dagster's floor on the same instance and the embedded path on the same raw files.

    uv run python bench/stack_backfill.py [--scale 1] [--root DIR] [--keep]
        [--paths stack halves floor embedded] [--snapshots 2]
        [--server-env NAME=VALUE ...] [--postgres NAME=VALUE ...]

Starts the stack through the project's own code (`olist_churn_dagster.stack.servers`, what
`make stack` runs) on free ports in a temporary folder, loads the raw tables (a run of
`load_raw_tables` submitted to the webserver), then launches, through the webserver's
GraphQL API as the UI's *Materialize* over all partitions does, a partition backfill of
the six feature assets over every registered reference date: the daemon starts its run,
the code server executes it. Then the same dates again as two backfills of one half each,
launched at once (DuckLake takes several writers: two runs write at the same time). Then
Dagster's floor on the same instance, by the same path: the six assets of
`bench/trivial_location.py` (they do nothing) over the same partitions, served by a second
code server. Then the daily loop: the model trained, and `--snapshots` days of the demo
feed landed one by one, each timed from its marker to its run's end (scores and digest
committed) through the snapshot sensor in the daemon. The stack is stopped, and the
embedded path runs on the same raw files: `bench/user_backfill.py`'s CLI backfill on a
SQLite instance.

Each row gives the wall time from the launch to the backfill's end, the CPU seconds of
every process of the stack over that time (Postgres with its backends, MLflow, the code
servers and their run workers, the webserver, the daemon; psutil, children included once
reaped), the load average, and the ratios to the embedded path and to the floor.

Levers, to measure each alone: `--storage postgres` puts Dagster's own Postgres storage (a
connection per statement) in place of the stack's pooled one; `--server-env` sets a
variable in every server's environment (`DAGSTER_EVENT_BATCH_SIZE=0` turns the stack's
batched event writes off); `--postgres` sets a Postgres server setting (in the data
folder's `postgresql.auto.conf` before the servers start).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import user_backfill  # noqa: E402  (the embedded path's CLI backfill)
from live_loop import FEED_DAYS  # noqa: E402  (the demo feed's days after the export)

from olist_churn_dagster.lib.ingest.snapshots import MARKER_FILE, replay  # noqa: E402
from olist_churn_dagster.stack import postgres, servers  # noqa: E402
from olist_churn_dagster_tests.e2e.server import (  # noqa: E402
    FINISHED_BACKFILL_STATUSES,
    GraphQL,
    backfill,
    free_port,
    launch_asset_backfill,
    launch_asset_backfills,
    launch_job,
    runs,
    wait_runs_finished,
    wait_until,
)
from olist_churn_dagster_tests.e2e.test_dagster_dev import (  # noqa: E402
    FEATURE_ASSETS,
    partition_keys,
)

FLOOR_LOCATION = "floor"
FLOOR_ASSETS = [["floor", path[-1]] for path in FEATURE_ASSETS]
# The daemon reads its workspace file again this often (Dagster's RELOAD_WORKSPACE_INTERVAL):
# the floor's code location, added after `up`, is known to it only after that.
DAEMON_WORKSPACE_REFRESH = 65.0
RELOAD_WORKSPACE = """
mutation { reloadWorkspace { __typename ... on PythonError { message } } }
"""


class Figure(NamedTuple):
    """One measured path: wall and CPU seconds, the largest resident memory of any one of
    its processes, the 1-minute load average before and after."""

    path: str
    wall: float
    cpu: float
    peak_gb: float
    load_before: float
    load_after: float


# --------------------------------------------------------------------------- the stack's CPU


def _trees(roots: Sequence[int]) -> list[psutil.Process]:
    found = []
    for pid in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            found.extend([root, *root.children(recursive=True)])
    return found


def cpu_seconds(roots: Sequence[int]) -> float:
    """CPU seconds used so far by the process trees under `roots`: each live process's own
    and its reaped children's (a run worker, a Postgres backend), so that the difference
    of two readings counts every process that lived in between, once."""
    total = 0.0
    for proc in _trees(roots):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def largest_rss_gb(roots: Sequence[int]) -> float:
    """The resident memory of the largest process now in the trees under `roots`, in GB."""
    largest = 0
    for proc in _trees(roots):
        with contextlib.suppress(psutil.NoSuchProcess):
            largest = max(largest, proc.memory_info().rss)
    return largest / 1e9


def stack_roots(config: servers.StackConfig, extra: Sequence[int] = ()) -> list[int]:
    """supervisord's pid (every server of the stack, Postgres included, is its child) and
    `extra`."""
    supervisord = (config.supervisor.root / "supervisord.pid").read_text().split()[0]
    return [int(supervisord), *extra]


# --------------------------------------------------------------------------- GraphQL


def launch_and_wait(
    gql: GraphQL, label: str, asset_paths: list[list[str]], ranges: list[list[str]],
    roots: list[int],
) -> Figure:  # fmt: skip
    """One partition backfill of `asset_paths` per range of keys, launched at once as the
    UI's *Materialize* launches one, timed from the launch until the daemon has finished
    every one; fails unless each succeeded in one run."""
    load, cpu = os.getloadavg()[0], cpu_seconds(roots)
    launched, started = time.time(), time.perf_counter()
    if len(ranges) == 1:
        backfill_ids = [launch_asset_backfill(gql, asset_paths, ranges[0])]
    else:
        backfill_ids = launch_asset_backfills(gql, asset_paths, ranges, title=label)
    peak_gb = 0.0

    def finished() -> list[dict[str, Any]] | None:  # polled every second, with the memory
        nonlocal peak_gb
        peak_gb = max(peak_gb, largest_rss_gb(roots))
        states = [backfill(gql, backfill_id) for backfill_id in backfill_ids]
        done = all(state["status"] in FINISHED_BACKFILL_STATUSES for state in states)
        return states if done else None

    states = wait_until(f"backfills {backfill_ids}", finished, timeout=7200, interval=1.0)
    wall = time.perf_counter() - started
    figure = Figure(label, wall, cpu_seconds(roots) - cpu, peak_gb, load, os.getloadavg()[0])
    timings = []
    for backfill_id, state in zip(backfill_ids, states, strict=True):
        found = runs(gql, tags={"dagster/backfill": backfill_id})
        if state["status"] != "COMPLETED_SUCCESS" or [r["status"] for r in found] != ["SUCCESS"]:
            raise RuntimeError(f"{label}: backfill {state}, runs {found}")
        (run,) = found
        timings.append(
            f"launch to run start {run['startTime'] - launched:.1f} s, "
            f"run {run['endTime'] - run['startTime']:.1f} s"
        )
    print(
        f"{label}: {sum(map(len, ranges))} partitions, wall {figure.wall:.1f} s "
        f"({'; '.join(timings)}), CPU {figure.cpu:.1f} s, peak {figure.peak_gb:.2f} GB "
        "(sampled each second)",
        flush=True,
    )
    return figure


# --------------------------------------------------------------------------- the floor's server


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((servers.HOST, port)) == 0


@contextlib.contextmanager
def floor_code_server(config: servers.StackConfig, gql: GraphQL) -> Iterator[int]:
    """A second code server with the floor's assets, added to the workspace of the
    webserver (reloaded now) and of the daemon (which reads it again within a minute)."""
    port = free_port()
    command = [
        str(REPO / ".venv/bin/dagster"), "code-server", "start", "--host", servers.HOST,
        "--port", str(port), "-f", str(REPO / "bench" / "trivial_location.py"),
        "--location-name", FLOOR_LOCATION,
    ]  # fmt: skip
    # The environment the stack gives its own code server.
    env = servers.server_environment(config) | servers.code_location_settings(config)
    with servers.log_file(config, "floor_code_server").open("ab") as log:
        process = subprocess.Popen(
            command, cwd=config.root, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until("the floor's code server", lambda: _listening(port) or None, timeout=300)
        workspace = servers.workspace_config(config)
        entry = {"host": servers.HOST, "port": port, "location_name": FLOOR_LOCATION}
        workspace["load_from"].append({"grpc_server": entry})
        (config.dagster_home / "workspace.yaml").write_text(yaml.safe_dump(workspace))
        gql(RELOAD_WORKSPACE)
        wait_until(
            "the floor in the webserver", lambda: servers.location_state(config), timeout=300
        )
        yield process.pid
    finally:  # SIGTERM, then SIGKILL for what is left of its group (its gRPC child)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)


# --------------------------------------------------------------------------- the paths


def _set_postgres(config: servers.StackConfig, settings: dict[str, str]) -> None:
    """Server settings in the data folder's `postgresql.auto.conf` (as ALTER SYSTEM writes
    them), in force from the stack's start on."""
    if not settings:
        return
    postgres.prepare(config.postgres_dir, servers.postgres_password(config))
    lines = "".join(f"{name} = '{value}'\n" for name, value in settings.items())
    with (config.postgres_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write(lines)


def _wait_job(gql: GraphQL, job: str) -> float:
    started = time.perf_counter()
    (run,) = wait_runs_finished(gql, job, timeout=7200, runIds=[launch_job(gql, job)])
    if run["status"] != "SUCCESS":
        raise RuntimeError(f"{job} ended {run['status']}")
    return time.perf_counter() - started


def daily_loop(config: servers.StackConfig, gql: GraphQL, snapshots: int) -> list[float]:
    """The model trained (a `train_churn_model` run), then `snapshots` days of the feed
    landed one by one, as the walkthrough replays them: each marker picked up by the
    snapshot sensor in the daemon, its run launched by the run queue through the code
    server. Returns each snapshot's seconds from its marker to the run's end (scores and
    digest committed)."""
    print(f"train_churn_model: {_wait_job(gql, 'train_churn_model'):.1f} s", flush=True)
    first = date.today() - timedelta(days=FEED_DAYS - 1)  # the day after the export's
    latencies = []
    for day in (first + timedelta(days=offset) for offset in range(snapshots)):
        time.sleep(2.0)  # the previous run's end is settled before the next marker
        (folder,) = replay(config.root / "feed", day, day, out_root=config.root / "snapshots")
        marker = (folder / MARKER_FILE).stat().st_mtime
        tags = {"olist/snapshot": day.isoformat()}
        (run,) = wait_runs_finished(gql, f"snapshot {day}", timeout=1800, tags=tags)
        if run["status"] != "SUCCESS":
            raise RuntimeError(f"the run of snapshot {day} ended {run['status']}")
        latencies.append(run["endTime"] - marker)
        print(
            f"snapshot {day}: marker to launch {run['creationTime'] - marker:.1f} s, to "
            f"scores committed {latencies[-1]:.1f} s (run {run['endTime'] - run['startTime']:.1f}"
            f" s), load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        print(f"  steps: {step_seconds(run)}", flush=True)
    return latencies


def step_seconds(run: dict[str, Any]) -> str:
    """Each step of a finished run with its seconds and its start after the run's start,
    in the order they started: where a run's time went."""
    steps = sorted(
        (s for s in run["stepStats"] if s["startTime"] and s["endTime"]),
        key=lambda s: s["startTime"],
    )
    start = run["startTime"]
    return ", ".join(
        f"{s['stepKey']} {s['endTime'] - s['startTime']:.1f} s (at {s['startTime'] - start:.1f})"
        for s in steps
    )


def stack_paths(
    config: servers.StackConfig, paths: Sequence[str], settings: dict[str, str], snapshots: int
) -> tuple[list[Figure], list[str]]:
    """The stack up, the raw load, then the feature backfill, the floor and the daily loop;
    the stack down."""
    _set_postgres(config, settings)
    servers.up(config, timeout=600, log=lambda line: print(f"[stack] {line}", flush=True))
    figures: list[Figure] = []
    try:
        gql = GraphQL(config.webserver_url, timeout=120)
        with floor_code_server(config, gql) as floor_pid:
            added = time.monotonic()
            started = time.perf_counter()
            (run,) = wait_runs_finished(
                gql, "the raw load", timeout=3600, runIds=[launch_job(gql, "load_raw_tables")]
            )
            if run["status"] != "SUCCESS":
                raise RuntimeError(f"the raw load ended {run['status']}")
            print(f"raw load (load_raw_tables): {time.perf_counter() - started:.1f} s")
            keys = partition_keys(gql, FEATURE_ASSETS[0])
            roots = stack_roots(config, [floor_pid])
            if "stack" in paths:
                figures.append(launch_and_wait(gql, "stack", FEATURE_ASSETS, [keys], roots))
            if "halves" in paths:  # DuckLake's several writers: two runs at once
                halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
                figures.append(
                    launch_and_wait(gql, "stack, two halves at once", FEATURE_ASSETS, halves, roots)
                )
            if "floor" in paths:
                time.sleep(max(0.0, DAEMON_WORKSPACE_REFRESH - (time.monotonic() - added)))
                figures.append(launch_and_wait(gql, "stack floor", FLOOR_ASSETS, [keys], roots))
            if snapshots and "stack" in paths:
                daily_loop(config, gql, snapshots)
    finally:
        servers.down(config.root, log=lambda line: print(f"[stack] {line}", flush=True))
    return figures, keys


def embedded_path(root: Path, raw: Path, keys: list[str]) -> Figure:
    """`bench/user_backfill.py`'s feature backfill through the CLI on a SQLite instance, on
    the stack's raw files, after its own raw load."""
    data = root / "embedded"
    (data / "dagster_home").mkdir(parents=True)
    shutil.copy(REPO / "instance" / "dagster.yaml", data / "dagster_home" / "dagster.yaml")
    (data / "raw").symlink_to(raw)
    env = user_backfill.cli_env(data)
    module = ["-m", "olist_churn_dagster.definitions"]
    user_backfill.dagster_cli(env, "asset", "materialize", *module, "--select", "group:raw")
    load = os.getloadavg()[0]
    wall, cpu, peak_gb, _ = user_backfill.dagster_cli(
        env, "asset", "materialize", *module, "--select", user_backfill.FEATURES,
        "--partition-range", f"{keys[0]}...{keys[-1]}",
    )  # fmt: skip
    print(
        f"embedded: {len(keys)} partitions, wall {wall:.1f} s, CPU {cpu:.1f} s, "
        f"peak {peak_gb:.2f} GB",
        flush=True,
    )
    return Figure("embedded", wall, cpu, peak_gb, load, os.getloadavg()[0])


def table(figures: Sequence[Figure]) -> str:
    """The figures with their ratios to the embedded path and to the stack's floor (wall)."""
    by_path = {figure.path: figure for figure in figures}

    def ratio(figure: Figure, base: str) -> str:
        return f"{figure.wall / by_path[base].wall:.2f}x" if base in by_path else "-"

    lines = [
        "| path | wall s | CPU s | peak GB | load before, after | to embedded | to floor |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    lines += [
        f"| {f.path} | {f.wall:.1f} | {f.cpu:.1f} | {f.peak_gb:.2f} "
        f"| {f.load_before:.1f}, {f.load_after:.1f} "
        f"| {ratio(f, 'embedded')} | {ratio(f, 'stack floor')} |"
        for f in figures
    ]
    return "\n".join(lines)


def _unpooled(
    instance_config: Callable[[servers.StackConfig], dict[str, Any]],
) -> Callable[[servers.StackConfig], dict[str, Any]]:
    """The stack's instance with Dagster's own Postgres storage in place of the pooled one."""

    def unpooled(config: servers.StackConfig) -> dict[str, Any]:
        instance = instance_config(config)
        instance["storage"] = {"postgres": instance["storage"]["custom"]["config"]}
        return instance

    return unpooled


@contextlib.contextmanager
def _environ(variables: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _pairs(values: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    if any("=" not in value for value in values):
        parser.error(f"expected NAME=VALUE, got {values}")
    return dict(value.split("=", 1) for value in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--root", type=Path, help="default: a new folder under /tmp")
    parser.add_argument("--keep", action="store_true", help="leave the folder in place")
    parser.add_argument(
        "--paths", nargs="+", default=["stack", "halves", "floor", "embedded"],
        choices=["stack", "halves", "floor", "embedded"],
    )  # fmt: skip
    parser.add_argument(
        "--storage", choices=["stack", "postgres"], default="stack",
        help="postgres: Dagster's own Postgres storage, a connection per statement, instead "
        "of the stack's pooled one",
    )  # fmt: skip
    parser.add_argument(
        "--snapshots", type=int, default=2, help="feed days landed after training (0: none)"
    )
    parser.add_argument("--server-env", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument("--postgres", nargs="*", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    # A SIGTERM (a killed benchmark) unwinds like an error: the stack and the floor's code
    # server are stopped and the folder removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server_env, settings = _pairs(args.server_env, parser), _pairs(args.postgres, parser)
    if args.storage == "postgres":
        servers.instance_config = _unpooled(servers.instance_config)

    # World-traversable: as root, Postgres runs as the `postgres` user.
    parent = args.root or Path(tempfile.mkdtemp(prefix="olist-stack-bench-"))
    parent.mkdir(parents=True, exist_ok=True)
    parent.chmod(0o711)
    ports = servers.Ports(
        postgres=free_port(), grpc=free_port(), webserver=free_port(), mlflow=free_port()
    )
    config = servers.StackConfig(root=parent / "stack", ports=ports, warehouse="ducklake")
    try:
        subprocess.run(
            [str(REPO / ".venv/bin/olist-churn"), "generate", str(config.root / "raw"),
             "--scale", str(args.scale), "--feed", str(config.root / "feed"),
             "--feed-days", str(FEED_DAYS)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        print(
            f"scale {args.scale}, {os.cpu_count()} cores, levers: "
            f"{' '.join([*args.server_env, *args.postgres]) or 'none'}",
            flush=True,
        )
        with _environ(server_env):  # every server inherits it, the embedded path does not
            figures, keys = stack_paths(config, args.paths, settings, args.snapshots)
        if "embedded" in args.paths:
            figures.append(embedded_path(parent, config.root / "raw", keys))
        print(table(figures))
    finally:
        if not args.keep:
            shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    main()
