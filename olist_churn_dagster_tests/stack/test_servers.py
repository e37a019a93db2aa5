"""The stack's configuration, and its Postgres under the stack's supervisord (the whole
stack runs in e2e/test_stack.py; supervisord itself in test_supervision.py)."""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from olist_churn_dagster.stack import postgres, servers, supervision
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
    # Runs are code-server subprocesses, whose death run monitoring can see (launcher.py).
    assert local["run_launcher"] == {
        "module": "olist_churn_dagster.stack.launcher",
        "class": "LocalProcessRunLauncher",
    }
    assert local["compute_logs"]["config"]["base_dir"].startswith(str(config.root))
    for same in ("run_retries", "telemetry"):
        assert local[same] == deployed[same], same
    # Run monitoring as deployed, polling often, without resuming (the local launcher
    # cannot): a run whose worker died or whose launch was lost fails and is retried.
    assert local["run_monitoring"]["enabled"] is True
    assert local["run_monitoring"]["poll_interval_seconds"] <= 10
    assert local["run_monitoring"]["max_resume_run_attempts"] == 0
    assert local["run_retries"]["enabled"] is True and local["run_retries"]["max_retries"] >= 1
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


def test_every_server_is_a_supervised_program_restarted_when_it_dies(
    config: servers.StackConfig,
):
    servers.write_configuration(config)
    conf = configparser.RawConfigParser()
    conf.read(config.supervisor.conf)
    programs = [section.removeprefix("program:") for section in conf.sections()]
    assert [p for p in programs if p in servers.SERVICES] == list(servers.SERVICES)
    priorities = [conf.getint(f"program:{name}", "priority") for name in servers.SERVICES]
    assert priorities == sorted(priorities), "started in order, stopped in reverse"
    for name in servers.SERVICES:
        program = dict(conf.items(f"program:{name}"))
        assert program["autorestart"] == "true" and int(program["startretries"]) >= 1
        assert program["killasgroup"] == "true"
        assert program["stdout_logfile"] == str(config.logs_dir / f"{name}.log")
        assert program["stdout_logfile_maxbytes"] and int(program["stdout_logfile_backups"]) > 0
    assert conf.get("program:postgres", "stopsignal") == "INT"  # fast shutdown
    assert conf.get("program:code_server", "stopasgroup") == "true"  # with its run workers
    code_server = conf.get("program:code_server", "environment")
    assert 'OLIST_CHURN_MLFLOW_TRACKING_URI="http://127.0.0.1:15000"' in code_server
    assert "PGPASSWORD" not in conf.get("program:code_server", "environment")
    assert 'MLFLOW_HTTP_REQUEST_MAX_RETRIES="4"' in code_server  # fails in ~15 s, not ~4 min
    # A backfill waits out a restarting code server instead of failing.
    daemon = conf.get("program:daemon", "environment")
    assert daemon == 'DAGSTER_BACKFILL_RETRY_DEFINITION_CHANGED_ERROR="1"'


def test_the_password_is_the_environments_when_given(config: servers.StackConfig, monkeypatch):
    monkeypatch.setenv(servers.PASSWORD_ENV, "from-the-environment")
    assert config.postgres.password == "from-the-environment"
    assert not config.password_file.exists()
    env = servers.server_environment(config)
    assert env[postgres.PASSWORD_ENV] == "from-the-environment"
    assert servers.PASSWORD_ENV not in env, "the servers get it under one name only"
    monkeypatch.delenv(servers.PASSWORD_ENV)
    generated = config.postgres.password
    assert generated == config.password_file.read_text().strip() != "from-the-environment"
    assert config.password_file.stat().st_mode & 0o777 == 0o600
    assert config.password_file.parent.stat().st_mode & 0o777 == 0o700


def test_every_server_batches_dagsters_event_writes(config: servers.StackConfig, monkeypatch):
    monkeypatch.delenv(servers.EVENT_BATCH_ENV, raising=False)
    env = servers.server_environment(config)  # every server's, so every run's
    assert int(env[servers.EVENT_BATCH_ENV]) >= 1000 > 582  # a year and a half of dates
    monkeypatch.setenv(servers.EVENT_BATCH_ENV, "0")  # the operator's choice stands
    assert servers.server_environment(config)[servers.EVENT_BATCH_ENV] == "0"


@pytest.fixture
def stack_postgres(monkeypatch) -> Iterator[servers.StackConfig]:
    """The stack's own Postgres (only it) started by the stack's code under its
    supervisord, with its configuration written, in a world-traversable folder (as root
    the server runs as `postgres`)."""
    monkeypatch.delenv(servers.PASSWORD_ENV, raising=False)
    parent = Path(tempfile.mkdtemp(prefix="olist-churn-stack-pg-"))
    parent.chmod(0o711)
    config = servers.StackConfig(root=parent / "stack", ports=servers.Ports(postgres=free_port()))
    try:
        servers.write_configuration(config)
        servers.start_supervisor(config)
        servers.start_postgres(config)
        yield config
    finally:
        servers.down(config.root, log=lambda _line: None)
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.slow  # starts the stack's Postgres under supervisord
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
    env = servers.server_environment(config)
    assert env[postgres.PASSWORD_ENV] == server.password
    monkeypatch.setenv(postgres.PASSWORD_ENV, env[postgres.PASSWORD_ENV])
    with DagsterInstance.from_config(str(config.dagster_home)) as instance:
        assert instance.get_runs_count() == 0

    # Postgres has it from supervisord's environment, which no file holds.
    (postmaster,) = [
        p for p in supervision.processes(config.supervisor) if p.pid == _pid(config, "postgres")
    ]
    assert postmaster.environ()[postgres.PASSWORD_ENV] == server.password

    # Nothing the stack writes or passes on the command line holds it.
    said = json.dumps([servers.commands(config), servers.code_location_settings(config)])
    assert server.password not in said
    server_log = servers.log_file(config, "postgres")
    assert "password authentication failed" in server_log.read_text()
    files = [f for f in config.root.rglob("*") if f.is_file() and f != config.password_file]
    written = {config.dagster_home / "dagster.yaml", config.supervisor.conf, server_log}
    assert written <= set(files)
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


@pytest.mark.slow  # starts the stack's Postgres under supervisord
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


def _pid(config: servers.StackConfig, name: str) -> int:
    return {s.name: s.pid for s in servers.status(config.root)}[name]


@pytest.mark.slow  # starts the stack's Postgres under supervisord
def test_the_stacks_postgres_is_restarted_when_it_dies_and_down_stops_it(
    stack_postgres: servers.StackConfig,
):
    config = stack_postgres
    first = _pid(config, "postgres")
    os.kill(first, signal.SIGKILL)  # its backends end with it (none here)
    deadline = time.monotonic() + 60
    while not (
        _pid(config, "postgres") not in (0, first) and postgres.accepting(config.ports.postgres)
    ):
        assert time.monotonic() < deadline, "Postgres did not come back"
        time.sleep(0.5)
    (state,) = [s for s in servers.status(config.root) if s.name == "postgres"]
    assert state.restarts == 1
    assert servers.running_services(config) == ["postgres"]
    with pytest.raises(servers.StackError, match=r"already runs .*\(supervisord; postgres\)"):
        servers.up(config)

    lines: list[str] = []
    servers.down(config.root, log=lines.append)
    assert lines[-1] == f"postgres     stopped (pid {state.pid})", lines
    assert all(line.endswith("was not running (STOPPED)") for line in lines[:-1]), lines
    assert not supervision.processes(config.supervisor)
    assert [s.state for s in servers.status(config.root)] == ["DOWN"] * len(servers.SERVICES)


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
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["server", "state", "pid", "uptime", "restarts", "where"]
    assert out[1].split()[:2] == ["postgres", "DOWN"]
    assert "http://127.0.0.1:13000" in "\n".join(out)
