"""The stack's configuration and process handling, without starting its servers (the whole
stack runs in e2e/test_stack.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from olist_churn_dagster.stack import postgres, servers
from olist_churn_dagster_tests.conftest import free_port
from olist_churn_dagster_tests.stack.test_postgres import psql

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture
def config(tmp_path: Path) -> servers.StackConfig:
    return servers.StackConfig(
        root=tmp_path / "stack", ports=servers.Ports(15432, 14000, 13000, 15000), warehouse="duckdb"
    )


def test_instance_is_the_deployments_on_the_local_postgres(config: servers.StackConfig):
    deployed = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    local = servers.instance_config(config)
    database = {"hostname": "127.0.0.1", "port": 15432, "db_name": "dagster"}
    assert local["storage"] == {
        "custom": {
            **servers.POOLED_STORAGE,
            "config": {
                "postgres_db": {
                    **database,
                    "username": "postgres",
                    "password": {"env": "PGPASSWORD"},
                }
            },
        }
    }
    assert "run_launcher" not in local, "the default launcher: runs are code-server subprocesses"
    assert local["compute_logs"]["config"]["base_dir"].startswith(str(config.root))
    for same in ("run_monitoring", "run_retries", "telemetry"):
        assert local[same] == deployed[same], same
    assert local["concurrency"]["runs"] == deployed["concurrency"]["runs"]
    assert local["concurrency"]["pools"]["default_limit"] == 1  # one DuckDB file, one writer


def test_webserver_and_daemon_reach_the_code_server_over_grpc(config: servers.StackConfig):
    (entry,) = servers.workspace_config(config)["load_from"]
    server = entry["grpc_server"]
    commands = servers.commands(config)
    code_server = commands["code_server"]
    assert code_server[code_server.index("--port") + 1] == str(server["port"]) == "14000"
    assert code_server[code_server.index("--location-name") + 1] == server["location_name"]
    assert server["location_name"] == "olist_churn_dagster"
    workspace = str(config.dagster_home / "workspace.yaml")
    assert workspace in commands["webserver"] and workspace in commands["daemon"]


def test_mlflow_server_on_postgres_serving_its_artifacts(config: servers.StackConfig):
    mlflow = servers.commands(config)["mlflow"]
    backend = mlflow[mlflow.index("--backend-store-uri") + 1]
    assert backend == "postgresql://postgres@127.0.0.1:15432/mlflow"  # PGPASSWORD has the password
    assert "--serve-artifacts" in mlflow
    assert mlflow[mlflow.index("--artifacts-destination") + 1] == str(config.artifacts_dir)
    settings = servers.code_location_settings(config)
    assert settings["OLIST_CHURN_MLFLOW_TRACKING_URI"] == "http://127.0.0.1:15000"
    assert settings["OLIST_CHURN_DATA_DIR"] == str(config.root)


def test_settings_the_stack_owns_are_refused(tmp_path: Path):
    with pytest.raises(servers.StackError, match="OLIST_CHURN_WAREHOUSE"):
        servers.StackConfig(root=tmp_path, settings={"OLIST_CHURN_WAREHOUSE": "x.duckdb"})
    with pytest.raises(servers.StackError, match="warehouse 'sqlite'"):
        servers.StackConfig(root=tmp_path, warehouse="sqlite")


def test_state_round_trips_and_a_missing_stack_is_named(config: servers.StackConfig):
    with pytest.raises(servers.StackError, match="no stack in"):
        servers.load_state(config.root)
    servers.write_configuration(config)
    assert servers.load_state(config.root) == config
    instance = yaml.safe_load((config.dagster_home / "dagster.yaml").read_text())
    assert instance == servers.instance_config(config)


def test_the_password_is_the_environments_when_given(config: servers.StackConfig, monkeypatch):
    monkeypatch.setenv(servers.PASSWORD_ENV, "from-the-environment")
    assert config.postgres.password == "from-the-environment"
    assert not config.password_file.exists()
    env = servers._environment(config, {})
    assert env[postgres.PASSWORD_ENV] == "from-the-environment"
    assert servers.PASSWORD_ENV not in env, "the servers get it under one name only"
    monkeypatch.delenv(servers.PASSWORD_ENV)
    generated = config.postgres.password
    assert generated == config.password_file.read_text().strip() != "from-the-environment"
    assert config.password_file.stat().st_mode & 0o777 == 0o600
    assert config.password_file.parent.stat().st_mode & 0o777 == 0o700


def test_every_server_batches_dagsters_event_writes(config: servers.StackConfig, monkeypatch):
    monkeypatch.delenv(servers.EVENT_BATCH_ENV, raising=False)
    for extra in ({}, servers.code_location_settings(config)):  # runs inherit the code server's
        env = servers._environment(config, extra)
        assert int(env[servers.EVENT_BATCH_ENV]) >= 1000 > 582  # a year and a half of dates
    monkeypatch.setenv(servers.EVENT_BATCH_ENV, "0")  # the operator's choice stands
    assert servers._environment(config, {})[servers.EVENT_BATCH_ENV] == "0"


@pytest.fixture
def stack_postgres(monkeypatch) -> Iterator[servers.StackConfig]:
    """The stack's own Postgres (only it) started by the stack's code, with its dagster.yaml
    written, in a world-traversable folder (as root the server runs as `postgres`)."""
    monkeypatch.delenv(servers.PASSWORD_ENV, raising=False)
    parent = Path(tempfile.mkdtemp(prefix="olist-churn-stack-pg-"))
    parent.chmod(0o711)
    config = servers.StackConfig(root=parent / "stack", ports=servers.Ports(postgres=free_port()))
    try:
        servers.write_configuration(config)
        servers.start_postgres(config)
        yield config
    finally:
        postgres.stop(config.postgres_dir)
        shutil.rmtree(parent, ignore_errors=True)


def test_the_stacks_postgres_asks_every_client_for_the_generated_password(
    stack_postgres: servers.StackConfig, monkeypatch
):
    from dagster import DagsterInstance, DagsterInvalidConfigError

    config, server = stack_postgres, stack_postgres.postgres
    for host in (postgres.HOST, str(server.data_dir)):  # TCP and the socket
        assert "no password supplied" in psql(server, host, None)
        assert "password authentication failed" in psql(server, host, "guessed")
        assert psql(server, host, server.password) == "in"

    # Dagster's instance as the servers load it: the password from PGPASSWORD, or nothing.
    monkeypatch.delenv(postgres.PASSWORD_ENV, raising=False)
    with pytest.raises(DagsterInvalidConfigError) as refused:
        DagsterInstance.from_config(str(config.dagster_home))
    unset = f'environment variable "{postgres.PASSWORD_ENV}" which is not set'
    assert any(unset in error.message for error in refused.value.errors)
    env = servers._environment(config, servers.code_location_settings(config))
    assert env[postgres.PASSWORD_ENV] == server.password
    monkeypatch.setenv(postgres.PASSWORD_ENV, env[postgres.PASSWORD_ENV])
    with DagsterInstance.from_config(str(config.dagster_home)) as instance:
        assert instance.get_runs_count() == 0

    # Nothing the stack writes or passes on the command line holds it.
    said = json.dumps([servers.commands(config), servers.code_location_settings(config)])
    assert server.password not in said
    server_log = server.data_dir / "server.log"
    assert "password authentication failed" in server_log.read_text()
    files = [f for f in config.root.rglob("*") if f.is_file() and f != config.password_file]
    assert {config.dagster_home / "dagster.yaml", server_log} <= set(files)
    holding = [str(f) for f in files if server.password.encode() in f.read_bytes()]
    assert not holding, f"the password is written in {holding}"


def _dagster_backends(server: postgres.PostgresServer) -> set[tuple[int, str]]:
    """(pid, start) of every Postgres backend connected to Dagster's database."""
    import psycopg2

    with contextlib.closing(psycopg2.connect(server.libpq("postgres"))) as conn:
        cursor = conn.cursor()
        cursor.execute(
            "SELECT pid, backend_start::text FROM pg_stat_activity WHERE datname = %s",
            (servers.DAGSTER_DB,),
        )
        return set(cursor.fetchall())


def test_the_instance_keeps_its_connections_open_between_statements(
    stack_postgres: servers.StackConfig, monkeypatch
):
    """Dagster's Postgres storage would connect (and authenticate) once per statement; the
    stack's keeps one connection per storage for the process's life."""
    from dagster import DagsterInstance

    server = stack_postgres.postgres
    monkeypatch.setenv(postgres.PASSWORD_ENV, server.password)
    with DagsterInstance.from_config(str(stack_postgres.dagster_home)) as instance:
        instance.get_runs_count()
        instance.get_asset_keys()
        held = _dagster_backends(server)
        assert held, "no connection kept open after the first statements"
        for _ in range(20):
            instance.get_runs_count()
            instance.get_asset_keys()
        assert _dagster_backends(server) == held, "statements opened new connections"


def test_a_taken_port_is_named_before_anything_starts(config: servers.StackConfig):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = servers.StackConfig(root=config.root, ports=servers.Ports(grpc=port))
        with pytest.raises(servers.StackError, match=f"grpc {port}"):
            servers.up(busy)
    assert not (config.root / servers.STATE_FILE).exists()


SERVER = """
import subprocess, sys, time
if sys.argv[1:] == ["with-child"]:
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
time.sleep(600)
"""


def test_down_stops_live_servers_and_the_orphans_of_a_dead_one(config: servers.StackConfig):
    servers.write_configuration(config)
    env = dict(os.environ)
    servers._spawn(config, "daemon", [sys.executable, "-c", SERVER], env)
    servers._spawn(config, "code_server", [sys.executable, "-c", SERVER, "with-child"], env)
    died = servers.read_record(config, "code_server")
    deadline = time.monotonic() + 30
    while len(servers._group_members(died)) < 2:  # its child (a run worker, say) started
        assert time.monotonic() < deadline, "the code server's child did not start"
        time.sleep(0.1)
    os.kill(died.pid, signal.SIGKILL)  # the code server dies, its run worker lives on
    os.waitpid(died.pid, 0)
    assert not died.alive()

    states = {s.name: s.running for s in servers.status(config.root)}
    assert states["daemon"] and not states["code_server"]

    lines: list[str] = []
    servers.down(config.root, grace=5, log=lines.append)
    assert any(line.startswith("daemon") and "stopped" in line for line in lines), lines
    assert any(line.startswith("code_server") and "had exited" in line for line in lines), lines
    assert not servers._group_members(died), "the dead server's child must be stopped too"
    assert not any(s.running for s in servers.status(config.root))
    assert not list(config.pids_dir.iterdir())


def test_a_recycled_pid_is_not_taken_for_a_server(config: servers.StackConfig):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        live = servers.ProcessRecord(sleeper.pid, servers._proc_stat(sleeper.pid)[2])
        assert live.alive()
        assert not servers.ProcessRecord(sleeper.pid, live.started - 1).alive()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not live.alive()


def test_a_ducklake_stack_keeps_its_catalog_in_postgres_and_several_writers(tmp_path: Path):
    lake = servers.StackConfig(
        root=tmp_path, ports=servers.Ports(postgres=15432), warehouse="ducklake"
    )
    settings = servers.code_location_settings(lake)
    assert settings["OLIST_CHURN_WAREHOUSE"] == (
        "ducklake:postgres:dbname=ducklake host=127.0.0.1 port=15432 user=postgres"
    )
    assert settings["OLIST_CHURN_WAREHOUSE_DATA_PATH"] == str(tmp_path / "lake")
    deployed = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    limit = servers.instance_config(lake)["concurrency"]["pools"]["default_limit"]
    assert limit == deployed["concurrency"]["pools"]["default_limit"] > 1


def test_cli_names_a_missing_stack_and_reports_a_stopped_one(config: servers.StackConfig, capsys):
    from olist_churn_dagster.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["stack", "status", "--root", str(config.root)])
    assert exited.value.code == 1
    assert "no stack in" in capsys.readouterr().err
    servers.write_configuration(config)
    with pytest.raises(SystemExit):
        main(["stack", "status", "--root", str(config.root)])
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["postgres", "DOWN"]
    assert "http://127.0.0.1:13000" in out
