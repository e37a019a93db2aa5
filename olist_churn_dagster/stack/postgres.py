"""A PostgreSQL server in a folder of its own, started from the machine's binaries.

The deployed stack keeps Dagster's instance, MLflow's backend store and the DuckLake
catalog in Postgres. Locally (`make stack`, the stack tests) the server runs from a data
folder the caller names, on a loopback port: nothing system wide is touched. Every
connection, over TCP or the socket in the data folder, needs the superuser's password
(`scram-sha-256`): any local user could otherwise reach the instance, the registry and the
catalog. Clients get the password from `PGPASSWORD` (libpq's variable), never from a
connection string, so it shows in no setting, command line or log. Postgres refuses to run
as root, so as root its commands run as the `postgres` user that Debian's package creates.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "postgres"
HOST = "127.0.0.1"
AUTH_METHOD = "scram-sha-256"
PASSWORD_ENV = "PGPASSWORD"  # read by every libpq client: psql, psycopg2, DuckDB's extensions


class PostgresError(RuntimeError):
    """The local Postgres server cannot be found, started or reached."""


@dataclass(frozen=True)
class PostgresServer:
    """A running server: where its files are and how to reach it. The URL and the libpq
    string hold no password: a client takes it from `client_env` (`PGPASSWORD`)."""

    data_dir: Path
    port: int
    password: str = field(repr=False)

    def url(self, database: str) -> str:
        """SQLAlchemy URL (Dagster's instance, MLflow's backend store)."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{database}"

    def libpq(self, database: str) -> str:
        """libpq keyword string (DuckDB's postgres and ducklake extensions)."""
        return f"dbname={database} host={HOST} port={self.port} user={SUPERUSER}"

    @property
    def client_env(self) -> dict[str, str]:
        """The environment a client needs beside the URL or libpq string."""
        return {PASSWORD_ENV: self.password}


def read_or_create_password(path: Path) -> str:
    """The password kept in `path`; a new random one written there first if it is missing.
    The file is the owner's only (mode 0600): a readable one is refused, not used."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_password(path)
    password = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return password


def _read_password(path: Path) -> str:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PostgresError(f"{path} is readable by others (mode {mode:o}): `chmod 600 {path}`")
    password = path.read_text().strip()
    if not password:
        raise PostgresError(f"{path} is empty: remove it only with the server's folder")
    return password


def bin_dir() -> Path:
    """Folder of `pg_ctl`: on PATH, else the newest `/usr/lib/postgresql/<version>/bin`."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda found: (
            int(found.parent.parent.name) if found.parent.parent.name.isdigit() else 0
        ),
    )
    if not versions:
        raise PostgresError(
            "PostgreSQL server binaries not found (pg_ctl): install Debian's `postgresql` "
            "package (`make postgres` does, as root)"
        )
    return versions[-1].parent


def _as_server_user(command: list[str]) -> list[str]:
    """Postgres will not run as root: run its commands as the `postgres` user then."""
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresError("running as root needs `runuser` to start Postgres as `postgres`")
    return [runuser, "-u", SUPERUSER, "--", *command]


def _run(command: list[str], what: str, env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(
        _as_server_user(command),
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        env=None if env is None else {**os.environ, **env},
    )
    if done.returncode != 0:
        raise PostgresError(
            f"{what} failed ({done.returncode}): {done.stderr.strip() or done.stdout}"
        )
    return done.stdout


def _prepare_folder(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        closed = [p for p in data_dir.parents if not p.stat().st_mode & 0o001]
        if closed:
            raise PostgresError(
                f"{closed[0]} is closed to other users, so the `postgres` user cannot reach "
                f"{data_dir}: choose a folder under a world-traversable path"
            )
        shutil.chown(data_dir, user=SUPERUSER, group=SUPERUSER)
    data_dir.chmod(0o700)


def is_running(data_dir: Path) -> bool:
    """Whether a server runs from `data_dir` (its postmaster.pid names a live process)."""
    pid_file = data_dir / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return False
    return Path(f"/proc/{pid}").exists()


def _initdb(data_dir: Path, password: str) -> None:
    """A new cluster whose superuser has `password`, which every connection must give.
    initdb reads it from a file: a 0600 one beside the folder, removed at once."""
    _prepare_folder(data_dir)
    fd, name = tempfile.mkstemp(dir=data_dir.parent, prefix=".pwfile-")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(password + "\n")
        if os.geteuid() == 0:
            shutil.chown(name, user=SUPERUSER, group=SUPERUSER)
        _run(
            [
                str(bin_dir() / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                SUPERUSER,
                f"--pwfile={name}",
                f"--auth-local={AUTH_METHOD}",
                f"--auth-host={AUTH_METHOD}",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            f"initdb in {data_dir}",
        )
    finally:
        Path(name).unlink(missing_ok=True)


def _check_password_auth(data_dir: Path) -> None:
    """Refuse a folder whose pg_hba.conf lets a connection in without a password (one made
    with `--auth=trust`): every local user could reach its databases."""
    rules = (data_dir / "pg_hba.conf").read_text().splitlines()
    trusting = [r for r in rules if "trust" in r.split() and not r.lstrip().startswith("#")]
    if trusting:
        raise PostgresError(
            f"{data_dir} accepts connections without a password ({trusting[0].strip()!r} in "
            "pg_hba.conf): remove the folder to start a server with password authentication"
        )


def prepare(data_dir: Path, password: str) -> None:
    """Initialise `data_dir` if empty, its superuser with `password`; refuse a folder that
    lets connections in without one."""
    if not (data_dir / "PG_VERSION").exists():
        _initdb(data_dir, password)
    _check_password_auth(data_dir)


def server_options(data_dir: Path, port: int) -> list[str]:
    """The server's options: 127.0.0.1:`port` and the socket in its folder."""
    return [
        *("-p", str(port), "-k", str(data_dir)),
        *("-c", f"listen_addresses={HOST}", "-c", "max_connections=200"),
    ]


def server_command(data_dir: Path, port: int) -> list[str]:
    """The server in the foreground (for a process supervisor), logging to stderr."""
    return [str(bin_dir() / "postgres"), "-D", str(data_dir), *server_options(data_dir, port)]


def accepting(port: int) -> bool:
    """Whether a server on 127.0.0.1:`port` accepts connections (`pg_isready`)."""
    command = [str(bin_dir() / "pg_isready"), "-q", "-h", HOST, "-p", str(port)]
    return subprocess.run(command, check=False, timeout=30).returncode == 0


def start(data_dir: Path, port: int, password: str) -> PostgresServer:
    """Prepare `data_dir` (see `prepare`) and start a server on 127.0.0.1:`port` in the
    background with `pg_ctl` (idempotent). `password` must be the folder's."""
    data_dir = data_dir.resolve()
    server = PostgresServer(data_dir=data_dir, port=port, password=password)
    prepare(data_dir, password)
    if is_running(data_dir):
        return server
    _run(
        [
            str(bin_dir() / "pg_ctl"),
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(data_dir),
            "-l",
            str(data_dir / "server.log"),
            "-o",
            shlex.join(server_options(data_dir, port)),
        ],
        f"starting Postgres on port {port} (log: {data_dir / 'server.log'})",
    )
    return server


def stop(data_dir: Path) -> None:
    """Stop the server of `data_dir` if it runs (fast shutdown: open sessions are ended)."""
    data_dir = data_dir.resolve()
    if is_running(data_dir):
        _run(
            [str(bin_dir() / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(data_dir)],
            f"stopping Postgres in {data_dir}",
        )


def create_database(server: PostgresServer, name: str) -> None:
    """Create database `name` unless it exists."""
    binaries = bin_dir()
    connect = ["-h", HOST, "-p", str(server.port), "-U", SUPERUSER]
    exists = _run(
        [
            str(binaries / "psql"),
            *connect,
            "-d",
            "postgres",
            "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname = '{name}'",
        ],
        f"looking up database {name}",
        server.client_env,
    )
    if exists.strip() != "1":
        _run(
            [str(binaries / "createdb"), *connect, name],
            f"creating database {name}",
            server.client_env,
        )
