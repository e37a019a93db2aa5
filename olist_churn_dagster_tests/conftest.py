"""Shared fixtures. The Dagster definitions read their settings (data directory, partition
range) when first imported, so every test of the Dagster layer uses the one session data
directory prepared here, before anything imports `olist_churn_dagster.definitions`."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

# The heaviest modules first on the workers of `make test-fast` (see balance.py).
pytest_plugins = ["olist_churn_dagster_tests.balance"]

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
REAL_DIR = REPO_ROOT.parent / "shared" / "olist-real"


DEMO_SCALE = 0.08
DEMO_SEED = 7
DEMO_END = date.today() - timedelta(days=1)
DEMO_START = DEMO_END - timedelta(days=520)


@pytest.fixture(scope="session")
def demo_raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated dataset (the same for the whole session)."""
    from olist_churn_dagster.generator.marketplace import generate_dataset

    out = tmp_path_factory.mktemp("demo") / "raw"
    generate_dataset(out, scale=DEMO_SCALE, seed=DEMO_SEED, start=DEMO_START, end=DEMO_END)
    return out


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory, demo_raw_dir: Path) -> Path:
    """The session's OLIST_CHURN_DATA_DIR, holding the demo dataset in raw/."""
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(demo_raw_dir, root / "raw")
    os.environ["OLIST_CHURN_DATA_DIR"] = str(root)
    os.environ["OLIST_CHURN_WINDOW_DAYS"] = "180"
    return root


@pytest.fixture(scope="session")
def definitions(data_dir: Path):
    """The code location's Definitions, loaded against the session data directory."""
    from olist_churn_dagster.bootstrap import load_definitions

    return load_definitions()


def settings_resource(definitions) -> dict[str, object]:
    """The code location's settings resource, for a context or a run built by hand (the
    daemon and the code location's jobs get it from the Definitions)."""
    return {"settings": definitions.resources["settings"]}


def sensor_context(definitions, **kwargs):
    """`dg.build_sensor_context(**kwargs)` with the code location's settings resource."""
    import dagster as dg

    return dg.build_sensor_context(resources=settings_resource(definitions), **kwargs)


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A real Postgres server for the session, in a folder of its own (stopped at the end),
    with a random password that the session's processes and their children get as
    `PGPASSWORD`, as the stack's servers do.

    The folder is under the system temp dir, world-traversable, because as root Postgres
    runs as the `postgres` user, who cannot enter pytest's private temp folders."""
    import secrets
    import tempfile

    from olist_churn_dagster.stack import postgres

    root = Path(tempfile.mkdtemp(prefix="olist-churn-pg-"))
    root.chmod(0o711)
    server = postgres.start(root / "data", free_port(), secrets.token_urlsafe(16))
    before = os.environ.get(postgres.PASSWORD_ENV)
    os.environ.update(server.client_env)
    try:
        yield server
    finally:
        postgres.stop(server.data_dir)
        shutil.rmtree(root, ignore_errors=True)
        os.environ.pop(postgres.PASSWORD_ENV)
        if before is not None:
            os.environ[postgres.PASSWORD_ENV] = before


@pytest.fixture()
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A chat webhook stand-in on 127.0.0.1 that keeps what it was posted."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/churn", received
    finally:
        server.shutdown()
        server.server_close()
