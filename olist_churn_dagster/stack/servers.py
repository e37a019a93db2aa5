"""The deployed stack started on this machine: each server its own process, all state in
one folder.

The same pieces as `deploy/docker-compose.yml`, without Docker: Postgres (Dagster's
instance, MLflow's backend store, the DuckLake catalog), MLflow's tracking server serving
its artifacts, the code location as a gRPC code server, and the Dagster webserver and
daemon reaching it over gRPC. Runs are started by the default run launcher, as
subprocesses of the code server, where the container launchers would start a container.
Every server is a program of one supervisord (see `supervision.py`), which restarts it
when it dies; `up` starts them in order, each once the one before answers.

Layout of the stack folder (`data/stack` for `make stack`), which is also the code
location's data directory (`OLIST_CHURN_DATA_DIR`):

    stack.json      ports and warehouse of the running stack (read by `down`, `status`)
    secrets/postgres_password   the Postgres password (mode 0600; see `postgres_password`)
    supervisord.conf, supervisor.sock   the supervisord that runs every server (supervision.py)
    logs/           supervisord's log and one rotated log per server
    postgres/       the Postgres data folder
    dagster_home/   dagster.yaml (derived from deploy/dagster.yaml), workspace.yaml
    mlartifacts/    MLflow's artifacts, read and written through its server
    lake/           a DuckLake warehouse's Parquet files (its catalog is in Postgres)
    warehouse.duckdb                    the warehouse as one DuckDB file, when so chosen
    raw/, snapshots/, exports/, alerts/ the code location's data
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from olist_churn_dagster.stack import postgres, supervision

T = TypeVar("T")

HOST = postgres.HOST
REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_INSTANCE = REPO_ROOT / "deploy" / "dagster.yaml"
LOCATION_NAME = "olist_churn_dagster"
DEFINITIONS_MODULE = "olist_churn_dagster.definitions"

DAGSTER_DB = "dagster"
MLFLOW_DB = "mlflow"
CATALOG_DB = "ducklake"
DATABASES = (DAGSTER_DB, MLFLOW_DB, CATALOG_DB)

# Where an operator may give the Postgres password instead of the generated file: the
# deployment's name for it (deploy/.env).
PASSWORD_ENV = "DAGSTER_PG_PASSWORD"

# MLflow's server would start job-queue consumers for its GenAI jobs (LLM judges, trace
# rollups), each a process holding memory; the churn model logs runs and models only.
MLFLOW_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

# Dagster's batched event writes, in every server (the webserver, the daemon and the code
# server, whose runs inherit it): the materializations a step reports for the partitions of
# one output, up to this many, go to Postgres as one INSERT and one index transaction
# instead of two transactions each. A caller's own value of the variable is kept (0: off).
EVENT_BATCH_ENV = "DAGSTER_EVENT_BATCH_SIZE"
EVENT_BATCH_SIZE = "1000"

# The MLflow client in the runs retries a request 4 times, 0, 2, 4 and 8 s apart (MLflow's
# default: 7 times over about 4 minutes): a server that supervisord restarts is back within
# that, and a training run against a server that is down fails in about 15 s, alerted,
# instead of holding its step for minutes.
MLFLOW_CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}

# A backfill whose code location cannot be loaded (the code server restarting) skips the
# daemon's iteration and resumes when it is back, instead of failing and cancelling its
# runs (dagster-io/dagster#18640; the variable is read by Dagster's backfill daemon).
DAEMON_ENV = {"DAGSTER_BACKFILL_RETRY_DEFINITION_CHANGED_ERROR": "1"}

# The servers, in start order (stopped in reverse).
SERVICES = ("postgres", "mlflow", "code_server", "webserver", "daemon")
# `duckdb`: one file, one writer process at a time; `ducklake`: catalog in Postgres,
# Parquet files under lake/, several writer processes.
WAREHOUSES = ("duckdb", "ducklake")
# Steps of the `warehouse` pool at once: deploy/dagster.yaml's limit on DuckLake.
POOL_LIMITS = {"duckdb": 1, "ducklake": 6}
# The code location's settings the stack decides; any other OLIST_CHURN_ variable of the
# caller's environment reaches the code location unchanged.
OWNED_SETTINGS = (
    "OLIST_CHURN_DATA_DIR",
    "OLIST_CHURN_WAREHOUSE",
    "OLIST_CHURN_WAREHOUSE_DATA_PATH",
    "OLIST_CHURN_MLFLOW_TRACKING_URI",
    "OLIST_CHURN_EXECUTOR",
)


class StackError(RuntimeError):
    """The stack cannot be started, stopped or found; the message says what to do."""


@dataclass(frozen=True)
class Ports:
    """Loopback ports of the servers."""

    postgres: int = 5433
    grpc: int = 4000
    webserver: int = 3000
    mlflow: int = 5000


@dataclass(frozen=True)
class StackConfig:
    """What to start and where, and which warehouse (see WAREHOUSES)."""

    root: Path
    ports: Ports = field(default_factory=Ports)
    warehouse: str = "ducklake"
    mlflow_workers: int = 1
    settings: Mapping[str, str] = field(default_factory=dict)  # more OLIST_CHURN_ settings

    def __post_init__(self) -> None:
        if self.warehouse not in WAREHOUSES:
            raise StackError(
                f"warehouse {self.warehouse!r}: expected one of {', '.join(WAREHOUSES)}"
            )
        owned = sorted(set(self.settings) & set(OWNED_SETTINGS))
        if owned:
            raise StackError(f"{', '.join(owned)} are set by the stack itself")
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def postgres_dir(self) -> Path:
        return self.root / "postgres"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def supervisor(self) -> supervision.Supervisor:
        return supervision.Supervisor(root=self.root, logs_dir=self.logs_dir)

    @property
    def password_file(self) -> Path:
        return self.root / "secrets" / "postgres_password"

    @property
    def postgres(self) -> postgres.PostgresServer:
        """The stack's Postgres server, with its password (see `postgres_password`)."""
        return postgres.PostgresServer(
            data_dir=self.postgres_dir, port=self.ports.postgres, password=postgres_password(self)
        )

    @property
    def webserver_url(self) -> str:
        return f"http://{HOST}:{self.ports.webserver}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.ports.mlflow}"

    @property
    def lake_dir(self) -> Path:
        """A DuckLake's Parquet files (object storage in production)."""
        return self.root / "lake"

    @property
    def warehouse_setting(self) -> str:
        """`OLIST_CHURN_WAREHOUSE` of the code location."""
        if self.warehouse == "ducklake":
            return f"ducklake:postgres:{self.postgres.libpq(CATALOG_DB)}"
        return str(self.root / "warehouse.duckdb")

    @property
    def pool_limit(self) -> int:
        """Slots of the `warehouse` pool: a DuckDB file takes one writer process."""
        return POOL_LIMITS[self.warehouse]


STATE_FILE = "stack.json"


def postgres_password(config: StackConfig) -> str:
    """`$DAGSTER_PG_PASSWORD` when set, else the stack's secret file, generated on first use
    (mode 0600 in a 0700 folder). Every server gets it as `PGPASSWORD` only: no
    configuration file, command line, setting or log of the stack holds it."""
    given = os.environ.get(PASSWORD_ENV)
    if given:
        return given
    config.password_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return postgres.read_or_create_password(config.password_file)


def save_state(config: StackConfig) -> None:
    state = {
        "ports": asdict(config.ports),
        "warehouse": config.warehouse,
        "mlflow_workers": config.mlflow_workers,
        "settings": dict(config.settings),
    }
    (config.root / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def load_state(root: Path) -> StackConfig:
    """The configuration `up` recorded in `root`."""
    path = Path(root) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise StackError(f"no stack in {root} ({STATE_FILE} is missing)") from None
    except ValueError as exc:
        raise StackError(f"{path} is not valid JSON: {exc}") from exc
    return StackConfig(
        root=Path(root),
        ports=Ports(**state["ports"]),
        warehouse=state["warehouse"],
        mlflow_workers=state["mlflow_workers"],
        settings=state.get("settings", {}),
    )


# --------------------------------------------------------------------------- configuration


# Dagster's Postgres storage keeping its connections open in every process (see
# instance_storage.py): the instance's events cost a statement each, not a connection each.
POOLED_STORAGE = {
    "module": "olist_churn_dagster.stack.instance_storage",
    "class": "PooledPostgresStorage",
}


# Runs are launched as subprocesses of the code server (Dagster's default launcher) by
# `LocalProcessRunLauncher`, which tells run monitoring when a run's worker process is gone
# (launcher.py). Run monitoring fails such a run at its next poll, and a run that never
# started (its launch lost with a daemon, say) after start_timeout_seconds; run retries
# start either again. A worker is not resumed: a new run re-executes from the failure.
RUN_LAUNCHER = {"module": "olist_churn_dagster.stack.launcher", "class": "LocalProcessRunLauncher"}
RUN_MONITORING = {
    "start_timeout_seconds": 180,
    "poll_interval_seconds": 5,
    "max_resume_run_attempts": 0,
}


def instance_config(config: StackConfig) -> dict[str, Any]:
    """The deployment's instance file with what differs here: storage on the local
    Postgres (its password read from `PGPASSWORD` when the instance loads) through pooled
    connections, the local run launcher (a run is a subprocess of the code server, not a
    container) and the run monitoring it allows, compute logs in the stack folder, and the
    pool the warehouse allows."""
    try:
        instance = yaml.safe_load(DEPLOY_INSTANCE.read_text())
    except FileNotFoundError:
        raise StackError(f"{DEPLOY_INSTANCE} is missing: run the stack from a checkout") from None
    database = {
        "hostname": HOST,
        "port": config.ports.postgres,
        "db_name": DAGSTER_DB,
        "username": postgres.SUPERUSER,
        "password": {"env": postgres.PASSWORD_ENV},
    }
    instance["storage"] = {
        "custom": {**POOLED_STORAGE, "config": {"postgres_db": database}},
    }
    instance["run_launcher"] = dict(RUN_LAUNCHER)
    instance["run_monitoring"] = {**instance["run_monitoring"], **RUN_MONITORING}
    instance["compute_logs"]["config"]["base_dir"] = str(config.dagster_home / "compute_logs")
    instance["concurrency"]["pools"]["default_limit"] = config.pool_limit
    return instance


def workspace_config(config: StackConfig) -> dict[str, Any]:
    """The webserver and the daemon reach the code server over gRPC, as in deploy/."""
    server = {"host": HOST, "port": config.ports.grpc, "location_name": LOCATION_NAME}
    return {"load_from": [{"grpc_server": server}]}


def code_location_settings(config: StackConfig) -> dict[str, str]:
    """The code location's settings (and so every run's: runs are its subprocesses)."""
    return {
        **config.settings,
        "OLIST_CHURN_DATA_DIR": str(config.root),
        "OLIST_CHURN_WAREHOUSE": config.warehouse_setting,
        "OLIST_CHURN_WAREHOUSE_DATA_PATH": str(config.lake_dir),
        "OLIST_CHURN_MLFLOW_TRACKING_URI": config.mlflow_url,
        "OLIST_CHURN_EXECUTOR": "in_process",
    }


def server_environment(config: StackConfig) -> dict[str, str]:
    """supervisord's environment, which every server inherits: the caller's, the Dagster
    home, Dagster's event batch size and the Postgres password as `PGPASSWORD` (Dagster's
    instance references it; libpq in MLflow and DuckDB reads it). Only here: never in
    supervisord.conf."""
    env = {k: v for k, v in os.environ.items() if k not in (*OWNED_SETTINGS, PASSWORD_ENV)}
    env.pop("VIRTUAL_ENV", None)
    bin_dir = str(Path(sys.executable).parent)
    env.setdefault(EVENT_BATCH_ENV, EVENT_BATCH_SIZE)
    env.update(
        DAGSTER_HOME=str(config.dagster_home),
        PYTHONUNBUFFERED="1",
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        **config.postgres.client_env,
    )
    return env


def commands(config: StackConfig) -> dict[str, list[str]]:
    """The command line of each server (the venv's entry points)."""
    bin_dir = Path(sys.executable).parent
    workspace = str(config.dagster_home / "workspace.yaml")
    ports = config.ports
    return {
        "postgres": postgres.server_command(config.postgres_dir, ports.postgres),
        "mlflow": [
            str(bin_dir / "mlflow"),
            "server",
            "--host",
            HOST,
            "--port",
            str(ports.mlflow),
            "--workers",
            str(config.mlflow_workers),
            "--backend-store-uri",
            config.postgres.url(MLFLOW_DB),
            "--serve-artifacts",
            "--artifacts-destination",
            str(config.artifacts_dir),
            "--allowed-hosts",
            f"{HOST},{HOST}:{ports.mlflow},localhost,localhost:{ports.mlflow}",
        ],
        "code_server": [
            str(bin_dir / "dagster"),
            "code-server",
            "start",
            "--host",
            HOST,
            "--port",
            str(ports.grpc),
            "--module-name",
            DEFINITIONS_MODULE,
            "--location-name",
            LOCATION_NAME,
        ],
        "webserver": [
            str(bin_dir / "dagster-webserver"),
            "--host",
            HOST,
            "--port",
            str(ports.webserver),
            "--workspace",
            workspace,
        ],
        "daemon": [str(bin_dir / "dagster-daemon"), "run", "--workspace", workspace],
    }


def programs(config: StackConfig) -> list[supervision.Program]:
    """The servers as supervisord's programs, in start order, with the settings each adds
    to the shared environment (none of them secret)."""
    cmd = commands(config)
    extra = {
        "mlflow": MLFLOW_ENV,
        "code_server": {**MLFLOW_CLIENT_ENV, **code_location_settings(config)},
        "daemon": DAEMON_ENV,
    }
    found = [
        supervision.Program(name, cmd[name], priority=10 * (i + 1), environment=extra.get(name, {}))
        for i, name in enumerate(SERVICES)
    ]
    # Postgres ends its own children; SIGINT is its fast shutdown (sessions ended). As root
    # it runs as the `postgres` user, as pg_ctl would.
    found[0] = replace(
        found[0],
        stop_signal="INT",
        stop_as_group=False,
        user=postgres.SUPERUSER if os.geteuid() == 0 else None,
    )
    return found


def log_file(config: StackConfig, name: str) -> Path:
    return config.supervisor.program_log(name)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- readiness


def wait_until(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.5,
    alive: Callable[[], bool] = lambda: True,
    detail: Callable[[], str] | None = None,
) -> T:
    """Call `probe` until it returns something other than None; `StackError` once `alive`
    says the process behind it exited, or after `timeout` s (with `detail()` appended)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if not alive():
            raise StackError(f"{what}: the process exited{detail() if detail else ''}")
        if time.monotonic() > deadline:
            raise StackError(f"{what}: not ready after {timeout:.0f} s{detail() if detail else ''}")
        time.sleep(interval)


def _http(url: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _http_probe(url: str) -> Any | None:
    try:
        return _http(url)
    except (OSError, urllib.error.URLError):
        return None


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((HOST, port)) == 0


WORKSPACE_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } }
} } } }
"""

DAEMONS_QUERY = """
{ instance { daemonHealth { allDaemonStatuses {
    daemonType required healthy lastHeartbeatTime
} } } }
"""


def graphql(config: StackConfig, query: str) -> dict[str, Any]:
    answer = _http(f"{config.webserver_url}/graphql", {"query": query})
    if not isinstance(answer, dict) or answer.get("errors"):
        raise StackError(f"GraphQL error from the webserver: {answer}")
    return answer["data"]


def location_state(config: StackConfig) -> str | None:
    """`LOADED` once the webserver has the code location; raises on a load error."""
    try:
        entries = graphql(config, WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
    except (OSError, urllib.error.URLError):
        return None
    for entry in entries:
        error = entry["locationOrLoadError"] or {}
        if error.get("__typename") == "PythonError":
            raise StackError(f"the code location failed to load: {error['message']}")
    states = {entry["loadStatus"] for entry in entries}
    return "LOADED" if states == {"LOADED"} else None


def daemons_beating_since(config: StackConfig, since: float) -> list[str] | None:
    """The required daemons once every one is healthy with a heartbeat after `since` (a
    Unix time); None until then or while the webserver does not answer. Dagster calls a
    daemon healthy for 30 minutes after its last heartbeat: a dead one looks alive."""
    try:
        health = graphql(config, DAEMONS_QUERY)["instance"]["daemonHealth"]
    except (OSError, urllib.error.URLError):
        return None
    required = [s for s in health["allDaemonStatuses"] if s["required"]]
    fresh = all(s["healthy"] and (s["lastHeartbeatTime"] or 0) > since for s in required)
    return sorted(s["daemonType"] for s in required) if fresh else None


# --------------------------------------------------------------------------- up, down, status


def _check_ports_free(config: StackConfig) -> None:
    taken = [f"{name} {port}" for name, port in asdict(config.ports).items() if _port_open(port)]
    if taken:
        raise StackError(
            f"ports already in use on {HOST}: {', '.join(taken)} (another stack, `make run`, "
            "or another server); choose others"
        )


def running_services(config: StackConfig) -> list[str]:
    """The servers supervisord of `config.root` runs or is starting."""
    return [
        name
        for name, state in supervision.states(config.supervisor).items()
        if state.state not in supervision.STOPPED_STATES
    ]


def write_configuration(config: StackConfig) -> None:
    """The stack folder, DAGSTER_HOME's dagster.yaml and workspace.yaml, supervisord.conf,
    stack.json."""
    for folder in (config.dagster_home, config.artifacts_dir, config.logs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    (config.dagster_home / "dagster.yaml").write_text(
        "# Written by `olist-churn stack up` from deploy/dagster.yaml (olist_churn_dagster/"
        "stack/servers.py)\n" + yaml.safe_dump(instance_config(config), sort_keys=False)
    )
    (config.dagster_home / "workspace.yaml").write_text(
        yaml.safe_dump(workspace_config(config), sort_keys=False)
    )
    supervision.write(config.supervisor, programs(config))
    save_state(config)


def up(config: StackConfig, *, timeout: float = 180.0, log: Callable[[str], None] = print) -> None:
    """Start supervisord, then every server in order, each once the one before answers;
    on failure stop everything."""
    config.root.mkdir(parents=True, exist_ok=True)
    if supervision.answers(config.supervisor):
        running = ", ".join(running_services(config)) or "no server started"
        raise StackError(
            f"a stack already runs from {config.root} (supervisord; {running}): "
            "`olist-churn stack down` first"
        )
    _check_ports_free(config)
    write_configuration(config)
    try:
        start_supervisor(config)
        _start(config, timeout=timeout, log=log)
    except BaseException:
        down(config.root, log=lambda _line: None)
        raise


def start_supervisor(config: StackConfig) -> None:
    """supervisord of the stack, with no server started yet."""
    try:
        supervision.start_daemon(config.supervisor, server_environment(config))
    except supervision.SupervisorError as exc:
        log = config.supervisor.log
        raise StackError(f"{exc}\n{log}:\n{log_tail(log)}") from exc


def start_postgres(config: StackConfig, timeout: float = 60.0) -> postgres.PostgresServer:
    """The stack's Postgres server running under supervisord, with its three databases."""
    server = config.postgres
    postgres.prepare(server.data_dir, server.password)
    _wait_service(config, "postgres", lambda: postgres.accepting(server.port) or None, timeout)
    try:
        for database in DATABASES:
            postgres.create_database(server, database)
    except postgres.PostgresError as exc:
        source = f"${PASSWORD_ENV}" if os.environ.get(PASSWORD_ENV) else config.password_file
        raise StackError(
            f"{exc}\nThe password comes from {source}: it must be the one {config.postgres_dir} "
            "was created with"
        ) from exc
    return server


def _start(config: StackConfig, *, timeout: float, log: Callable[[str], None]) -> None:
    started = time.perf_counter()

    def done(what: str) -> None:
        log(f"{what:<46} {time.perf_counter() - started:6.1f} s")

    start_postgres(config, timeout)
    done(f"postgres      {HOST}:{config.ports.postgres} ({', '.join(DATABASES)})")

    # MLflow migrates its database while the code server loads the definitions.
    probes: dict[str, Callable[[], Any]] = {
        "mlflow": lambda: _http_probe(f"{config.mlflow_url}/health"),
        "code_server": lambda: _port_open(config.ports.grpc) or None,
        "webserver": lambda: location_state(config),
        "daemon": lambda: daemons_beating_since(config, launched),
    }
    where = {
        "mlflow": f"mlflow        {config.mlflow_url}",
        "code_server": f"code server   {HOST}:{config.ports.grpc} (gRPC)",
        "webserver": f"webserver     {config.webserver_url}",
        "daemon": "daemon        (every required daemon beating)",
    }
    launched = time.time()
    for pair in (("mlflow", "code_server"), ("webserver", "daemon")):
        pids = {name: _launch(config, name) for name in pair}
        for name in pair:
            _wait_service(config, name, probes[name], timeout, pids[name])
            done(where[name])
    _wait_supervised(config, timeout)
    done("supervisord   every server RUNNING")


def _wait_supervised(config: StackConfig, timeout: float) -> None:
    """Every server past supervisord's `startsecs` in the same process: started for good,
    so that a death from now on is restarted rather than retried as a failed start."""
    for name, state in supervision.states(config.supervisor).items():

        def running(name: str = name) -> bool | None:
            return supervision.states(config.supervisor)[name].running or None

        _wait_service(config, name, running, timeout, state.pid)


def _launch(config: StackConfig, name: str) -> int:
    """Have supervisord start `name`; its pid."""
    try:
        return supervision.start(config.supervisor, name)
    except supervision.SupervisorError as exc:
        log = log_file(config, name)
        raise StackError(f"{exc}\n{log}:\n{log_tail(log)}") from exc


def _wait_service(
    config: StackConfig,
    name: str,
    probe: Callable[[], T | None],
    timeout: float,
    pid: int | None = None,
) -> T:
    """Start `name` unless `pid` says it was, then wait until `probe` answers; fails at
    once if its process exits (supervisord would start another: a new pid)."""
    if pid is None:
        pid = _launch(config, name)

    def alive() -> bool:
        state = supervision.states(config.supervisor).get(name)
        return state is not None and state.pid == pid and state.state in ("STARTING", "RUNNING")

    log = log_file(config, name)
    return wait_until(
        name, probe, timeout=timeout, alive=alive, detail=lambda: f"\n{log}:\n{log_tail(log)}"
    )


def down(root: Path, *, log: Callable[[str], None] = print) -> None:
    """Stop every server of the stack in `root` (the daemon first, Postgres last) and
    supervisord; then whatever a killed server left (a run worker)."""
    config = load_state(root)
    before = supervision.states(config.supervisor)
    timeout = len(SERVICES) * (supervision.STOP_SECONDS + 5)
    for line in supervision.shutdown(config.supervisor, timeout=timeout):
        log(line)
    for name in reversed(SERVICES):
        state = before.get(name)
        if state is not None and state.pid:
            log(f"{name:<12} stopped (pid {state.pid})")
        elif state is not None:
            log(f"{name:<12} was not running ({state.state})")


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str  # supervisord's: RUNNING, STARTING, BACKOFF, STOPPED, EXITED, FATAL ...
    pid: int
    uptime: float  # seconds
    restarts: int
    detail: str

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"


def status(root: Path) -> list[ServiceStatus]:
    """Each server: its state, uptime and restarts under supervisord, and where it answers.
    Every server is DOWN when supervisord does not run."""
    config = load_state(root)
    where = {
        "postgres": f"{HOST}:{config.ports.postgres} databases {', '.join(DATABASES)}",
        "mlflow": config.mlflow_url,
        "code_server": f"{HOST}:{config.ports.grpc} (gRPC)",
        "webserver": config.webserver_url,
        "daemon": f"DAGSTER_HOME={config.dagster_home}",
    }
    states = supervision.states(config.supervisor)
    found = []
    for name in SERVICES:
        state = states.get(name, supervision.ProgramState(name, "DOWN", 0, 0.0, 0))
        found.append(
            ServiceStatus(name, state.state, state.pid, state.uptime, state.restarts, where[name])
        )
    return found
