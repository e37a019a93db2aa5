"""The deployed stack started on this machine: each server its own process, all state in
one folder.

The same pieces as `deploy/docker-compose.yml`, without Docker: Postgres (Dagster's
instance, MLflow's backend store, the DuckLake catalog), MLflow's tracking server serving
its artifacts, the code location as a gRPC code server, and the Dagster webserver and
daemon reaching it over gRPC. Runs are started by the default run launcher, as
subprocesses of the code server, where the container launchers would start a container.

Layout of the stack folder (`data/stack` for `make stack`), which is also the code
location's data directory (`OLIST_CHURN_DATA_DIR`):

    stack.json      ports and warehouse of the running stack (read by `down`, `status`)
    secrets/postgres_password   the Postgres password (mode 0600; see `postgres_password`)
    pids/, logs/    a pid file and a log per server
    postgres/       the Postgres data folder (its own log: postgres/server.log)
    dagster_home/   dagster.yaml (derived from deploy/dagster.yaml), workspace.yaml
    mlartifacts/    MLflow's artifacts, read and written through its server
    lake/           a DuckLake warehouse's Parquet files (its catalog is in Postgres)
    warehouse.duckdb                    the warehouse as one DuckDB file, when so chosen
    raw/, snapshots/, exports/, alerts/ the code location's data
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from olist_churn_dagster.stack import postgres

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

# The processes besides Postgres, in start order (stopped in reverse).
SERVICES = ("mlflow", "code_server", "webserver", "daemon")
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
    def pids_dir(self) -> Path:
        return self.root / "pids"

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


def instance_config(config: StackConfig) -> dict[str, Any]:
    """The deployment's instance file with what differs here: storage on the local
    Postgres (its password read from `PGPASSWORD` when the instance loads) through pooled
    connections, the default run launcher (a run is a subprocess of the code server, not a
    container), compute logs in the stack folder, and the pool the warehouse allows."""
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
    instance.pop("run_launcher", None)
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


def _environment(config: StackConfig, extra: Mapping[str, str]) -> dict[str, str]:
    """A server's environment: the caller's, the stack's settings, Dagster's event batch
    size and the Postgres password as `PGPASSWORD` (Dagster's instance references it; libpq
    in MLflow and DuckDB reads it)."""
    env = {k: v for k, v in os.environ.items() if k not in (*OWNED_SETTINGS, PASSWORD_ENV)}
    env.pop("VIRTUAL_ENV", None)
    bin_dir = str(Path(sys.executable).parent)
    env.setdefault(EVENT_BATCH_ENV, EVENT_BATCH_SIZE)
    env.update(
        DAGSTER_HOME=str(config.dagster_home),
        PYTHONUNBUFFERED="1",
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        **config.postgres.client_env,
        **extra,
    )
    return env


def commands(config: StackConfig) -> dict[str, list[str]]:
    """The command line of each server (the venv's entry points)."""
    bin_dir = Path(sys.executable).parent
    workspace = str(config.dagster_home / "workspace.yaml")
    ports = config.ports
    return {
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


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class ProcessRecord:
    """A started server: its pid (also its process group) and when it started, so that a
    recycled pid is never taken for it."""

    pid: int
    started: int  # clock ticks after boot, field 22 of /proc/<pid>/stat

    def alive(self) -> bool:
        stat = _proc_stat(self.pid)
        return stat is not None and stat[2] == self.started and stat[0] != "Z"


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time) of a live process, None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return fields[0], int(fields[2]), int(fields[19])


def _group_members(record: ProcessRecord) -> list[int]:
    """Live processes of the server's process group started no earlier than it."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat and stat[1] == record.pid and stat[2] >= record.started and stat[0] != "Z":
            members.append(int(entry.name))
    return members


def _pid_file(config: StackConfig, name: str) -> Path:
    return config.pids_dir / f"{name}.pid"


def log_file(config: StackConfig, name: str) -> Path:
    return config.logs_dir / f"{name}.log"


def read_record(config: StackConfig, name: str) -> ProcessRecord | None:
    try:
        pid, started = _pid_file(config, name).read_text().split()
    except (OSError, ValueError):
        return None
    return ProcessRecord(int(pid), int(started))


def _spawn(config: StackConfig, name: str, command: list[str], env: Mapping[str, str]) -> None:
    import subprocess

    log = log_file(config, name)
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            cwd=config.root,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it reaches every child
        )
    stat = _proc_stat(process.pid)
    if stat is None:
        raise StackError(f"{name} exited at once: see {log}")
    _pid_file(config, name).write_text(f"{process.pid} {stat[2]}\n")


def _stop_group(record: ProcessRecord, grace: float) -> bool:
    """SIGTERM the group, SIGKILL what is left after `grace` s. True if the leader lived."""
    leader_alive = record.alive()
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        members = _group_members(record)
        if not members:
            break
        if leader_alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.pid, sig)
        else:  # the leader died: signal its orphans one by one (its pid may be reused)
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _group_members(record) and time.monotonic() < deadline:
            _reap(record.pid)
            time.sleep(0.2)
    _reap(record.pid)
    if _group_members(record):
        raise StackError(f"process group {record.pid} survived SIGKILL")
    return leader_alive


def _reap(pid: int) -> None:
    """Collect the exit status of a server started by this very process (tests)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


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
{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }
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


def unhealthy_daemons(config: StackConfig) -> list[str] | None:
    """The required daemons without a recent heartbeat (None: the webserver did not answer)."""
    try:
        health = graphql(config, DAEMONS_QUERY)["instance"]["daemonHealth"]
    except (OSError, urllib.error.URLError):
        return None
    return sorted(
        s["daemonType"] for s in health["allDaemonStatuses"] if s["required"] and not s["healthy"]
    )


# --------------------------------------------------------------------------- up, down, status


def _check_ports_free(config: StackConfig) -> None:
    taken = [f"{name} {port}" for name, port in asdict(config.ports).items() if _port_open(port)]
    if taken:
        raise StackError(
            f"ports already in use on {HOST}: {', '.join(taken)} (another stack, `make run`, "
            "or another server); choose others"
        )


def running_services(config: StackConfig) -> list[str]:
    alive = [name for name in SERVICES if (r := read_record(config, name)) and r.alive()]
    if postgres.is_running(config.postgres_dir):
        alive.insert(0, "postgres")
    return alive


def write_configuration(config: StackConfig) -> None:
    """The stack folder, DAGSTER_HOME's dagster.yaml and workspace.yaml, stack.json."""
    for folder in (config.dagster_home, config.artifacts_dir, config.logs_dir, config.pids_dir):
        folder.mkdir(parents=True, exist_ok=True)
    (config.dagster_home / "dagster.yaml").write_text(
        "# Written by `olist-churn stack up` from deploy/dagster.yaml (olist_churn_dagster/"
        "stack/servers.py)\n" + yaml.safe_dump(instance_config(config), sort_keys=False)
    )
    (config.dagster_home / "workspace.yaml").write_text(
        yaml.safe_dump(workspace_config(config), sort_keys=False)
    )
    save_state(config)


def up(config: StackConfig, *, timeout: float = 180.0, log: Callable[[str], None] = print) -> None:
    """Start every server and wait until each answers; on failure stop what started."""
    config.root.mkdir(parents=True, exist_ok=True)
    if (config.root / STATE_FILE).exists():
        already = running_services(load_state(config.root))
        if already:
            raise StackError(
                f"a stack already runs from {config.root} ({', '.join(already)}): "
                "`olist-churn stack down` first"
            )
    _check_ports_free(config)
    write_configuration(config)
    try:
        _start(config, timeout=timeout, log=log)
    except BaseException:
        down(config.root, log=lambda _line: None)
        raise


def start_postgres(config: StackConfig) -> postgres.PostgresServer:
    """The stack's Postgres server running, with its three databases."""
    server = config.postgres
    postgres.start(server.data_dir, server.port, server.password)
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

    start_postgres(config)
    done(f"postgres      {HOST}:{config.ports.postgres} ({', '.join(DATABASES)})")

    cmd = commands(config)
    location_env = _environment(config, code_location_settings(config))
    plain_env = _environment(config, {})

    # MLflow migrates its database while the code server loads the definitions.
    _spawn(config, "mlflow", cmd["mlflow"], _environment(config, MLFLOW_ENV))
    _spawn(config, "code_server", cmd["code_server"], location_env)
    _wait_service(config, "mlflow", lambda: _http_probe(f"{config.mlflow_url}/health"), timeout)
    done(f"mlflow        {config.mlflow_url}")
    _wait_service(config, "code_server", lambda: _port_open(config.ports.grpc) or None, timeout)
    done(f"code server   {HOST}:{config.ports.grpc} (gRPC)")

    _spawn(config, "webserver", cmd["webserver"], plain_env)
    _spawn(config, "daemon", cmd["daemon"], plain_env)
    _wait_service(config, "webserver", lambda: location_state(config), timeout)
    done(f"webserver     {config.webserver_url}")
    _wait_service(
        config, "daemon", lambda: True if unhealthy_daemons(config) == [] else None, timeout
    )
    done("daemon        (every required daemon healthy)")


def _wait_service(
    config: StackConfig, name: str, probe: Callable[[], T | None], timeout: float
) -> T:
    record, log = read_record(config, name), log_file(config, name)
    return wait_until(
        name,
        probe,
        timeout=timeout,
        alive=lambda: record is not None and record.alive(),
        detail=lambda: f"\n{log}:\n{log_tail(log)}",
    )


def down(root: Path, *, grace: float = 30.0, log: Callable[[str], None] = print) -> None:
    """Stop every server of the stack in `root`, the last started first; a server that
    died is reported and its leftover processes (a run worker) are stopped too."""
    config = load_state(root)
    for name in reversed(SERVICES):
        record = read_record(config, name)
        if record is None:
            continue
        was_alive = _stop_group(record, grace)
        _pid_file(config, name).unlink(missing_ok=True)
        log(f"{name:<12} {'stopped' if was_alive else 'had exited'} (pid {record.pid})")
    if postgres.is_running(config.postgres_dir):
        postgres.stop(config.postgres_dir)
        log("postgres     stopped")


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    detail: str


def status(root: Path) -> list[ServiceStatus]:
    """Each server: whether its process runs, and where it answers."""
    config = load_state(root)
    found = [
        ServiceStatus(
            "postgres",
            postgres.is_running(config.postgres_dir),
            f"{HOST}:{config.ports.postgres} databases {', '.join(DATABASES)}",
        )
    ]
    where = {
        "mlflow": config.mlflow_url,
        "code_server": f"{HOST}:{config.ports.grpc} (gRPC)",
        "webserver": config.webserver_url,
        "daemon": f"DAGSTER_HOME={config.dagster_home}",
    }
    for name in SERVICES:
        record = read_record(config, name)
        running = record is not None and record.alive()
        pid = f"pid {record.pid}" if record else "no pid file"
        found.append(ServiceStatus(name, running, f"{where[name]} ({pid})"))
    return found
