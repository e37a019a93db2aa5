"""One real `dg dev` for the whole end-to-end session, on a prepared warehouse.

The fixture builds what `make run` builds, in temporary folders: a small generated
dataset, a Dagster instance home with the repository's `instance/dagster.yaml`, `olist-churn
prepare` (raw tables, every feature partition, a champion model, recent scores) run as a
subprocess, then `dg dev` in its own process group. Teardown stops the group and
fails if any process of it survives.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import psutil
import pytest

from olist_churn_dagster.stack import servers
from olist_churn_dagster_tests.e2e.server import DagsterDev, GraphQL, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
OUTPUT_DIR = REPO_ROOT / "test-output"

E2E_SCALE = 0.05
E2E_SEED = 7
E2E_END = date.today() - timedelta(days=1)
E2E_START = E2E_END - timedelta(days=520)


@dataclass(frozen=True)
class Server:
    """The running server and the state it works on."""

    url: str
    data_dir: Path
    dagster_home: Path
    env: dict[str, str]
    gql: GraphQL

    @property
    def warehouse(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    @property
    def snapshots(self) -> Path:
        return self.data_dir / "snapshots"

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """`olist-churn ARGS` with the server's settings; fails with its output on error."""
        done = subprocess.run(
            [str(VENV_BIN / "olist-churn"), *args],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, (
            f"olist-churn {' '.join(args)} exited with {done.returncode}\n"
            f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
        )
        return done


def operator_environment() -> dict[str, str]:
    """An operator's shell: this one without any OLIST_CHURN_ setting, Dagster home or
    active virtualenv, so `make` and the README's commands find their own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLIST_CHURN_")}
    for name in ("DAGSTER_HOME", "VIRTUAL_ENV"):
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def environment(data_dir: Path, dagster_home: Path) -> dict[str, str]:
    """The environment `make run` gives its processes, on these folders (no other
    OLIST_CHURN_ setting leaks in)."""
    env = operator_environment()
    env.update(
        OLIST_CHURN_DATA_DIR=str(data_dir),
        DAGSTER_HOME=str(dagster_home),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def _timed(label: str, started: float) -> None:
    print(f"\n[e2e] {label}: {time.perf_counter() - started:.1f} s", file=sys.stderr)


@contextlib.contextmanager
def serve(root: Path, setup: Callable[[Server], None]) -> Iterator[Server]:
    """A data directory under `root` filled by `setup` (given a server-less `Server` to
    run the CLI with), then `dg dev` on it until the block ends."""
    data_dir = root / "data"
    dagster_home = data_dir / "dagster_home"
    dagster_home.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "instance" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = environment(data_dir, dagster_home)
    setup(Server("", data_dir, dagster_home, env, GraphQL("")))

    server = DagsterDev(REPO_ROOT, env, log_path=root / "dagster-dev.log")
    started = time.perf_counter()
    server.start()
    try:
        server.wait_ready(timeout=120)
        _timed(f"dg dev ready at {server.url}", started)
        yield Server(server.url, data_dir, dagster_home, env, GraphQL(server.url))
    finally:
        started = time.perf_counter()
        left = server.stop()
        _timed("dg dev stopped", started)
        OUTPUT_DIR.mkdir(exist_ok=True)
        shutil.copy(server.log_path, OUTPUT_DIR / f"{root.name}-dagster-dev.log")
    assert not left, "processes of dg dev left after teardown:\n" + "\n".join(left)


def generate_demo(bootstrap: Server, out: Path) -> None:
    """The end-to-end tests' small generated dataset, written to `out`."""
    started = time.perf_counter()
    bootstrap.cli(
        "generate",
        str(out),
        "--scale",
        str(E2E_SCALE),
        "--seed",
        str(E2E_SEED),
        "--start",
        E2E_START.isoformat(),
        "--end",
        E2E_END.isoformat(),
    )
    _timed("generate", started)


def _generate_and_prepare(bootstrap: Server) -> None:
    generate_demo(bootstrap, bootstrap.data_dir / "raw")
    started = time.perf_counter()
    bootstrap.cli("prepare")
    _timed("olist-churn prepare", started)


@pytest.fixture(scope="session")
def dagster_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("e2e"), _generate_and_prepare) as server:
        yield server


@contextlib.contextmanager
def running_stack(name: str, warehouse: str = "ducklake") -> Iterator[servers.StackConfig]:
    """The deployed stack (`make stack`'s code) on free ports in a folder of its own, with
    the small generated dataset in its raw/; stopped at the end, its logs copied to
    test-output/`name`-*.log, and no process of it may be left. The folder is under the
    system temp dir and world-traversable: as root, Postgres runs as the `postgres` user,
    who cannot enter pytest's private temp folders."""
    from olist_churn_dagster.generator.marketplace import generate_dataset

    parent = Path(tempfile.mkdtemp(prefix="olist-churn-stack-"))
    parent.chmod(0o711)
    ports = servers.Ports(
        postgres=free_port(), grpc=free_port(), webserver=free_port(), mlflow=free_port()
    )
    config = servers.StackConfig(root=parent / "stack", ports=ports, warehouse=warehouse)
    generate_dataset(
        config.root / "raw", scale=E2E_SCALE, seed=E2E_SEED, start=E2E_START, end=E2E_END
    )
    say = lambda line: print(f"[{name}] {line}", file=sys.stderr)  # noqa: E731
    try:
        started = time.perf_counter()
        servers.up(config, timeout=300, log=say)
        say(f"stack up: {time.perf_counter() - started:.1f} s")
        yield config
    finally:
        started = time.perf_counter()
        if (config.root / servers.STATE_FILE).exists():  # else up stopped before writing it
            servers.down(config.root, log=say)
        say(f"stack down: {time.perf_counter() - started:.1f} s")
        left = processes_in(config.root)
        OUTPUT_DIR.mkdir(exist_ok=True)
        for log in config.logs_dir.glob("*.log"):
            shutil.copy(log, OUTPUT_DIR / f"{name}-{log.name}")
        shutil.rmtree(parent, ignore_errors=True)
    assert not left, "processes of the stack left after `down`:\n" + "\n".join(left)


def processes_in(root: Path) -> list[str]:
    """Live processes working in `root` or below (every server of a stack and what they
    start run there; Postgres in its data folder), described."""
    found = []
    for proc in psutil.process_iter(["pid", "cwd", "cmdline", "status"]):
        cwd = proc.info["cwd"]
        if cwd and Path(cwd).is_relative_to(root) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(f"pid {proc.pid}: {' '.join(proc.info['cmdline'] or [])[:200]}")
    return found
