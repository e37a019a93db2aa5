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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest

from olist_churn_dagster_tests.e2e.server import DagsterDev, GraphQL

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
