"""Servers kept running by supervisord (the `supervisor` package from PyPI).

One supervisord per stack folder runs every server as a program of its own: it restarts a
server that dies, gives up on one that keeps dying at start, keeps and rotates each
server's log, and stops each server's whole process group. The stack writes its
`supervisord.conf`, starts it with the servers' shared environment (children inherit it,
so a secret in it is never written to the file) and talks to it over its UNIX socket with
the XML-RPC interface that `supervisorctl` uses.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

# A server that exits within START_SECONDS of its start failed to start: supervisord tries
# START_RETRIES more times, waiting 1, 2, 3 s between them, then gives up (FATAL). One that
# ran longer is restarted at once, so a crashing server restarts at most once per
# START_SECONDS.
START_SECONDS = 10
START_RETRIES = 3
STOP_SECONDS = 30  # from the stop signal to SIGKILL
LOG_MAX_BYTES = "20MB"
LOG_BACKUPS = 5
STOPPED_STATES = frozenset({"STOPPED", "EXITED", "FATAL", "UNKNOWN"})


class SupervisorError(RuntimeError):
    """supervisord cannot be started or reached; the message says why."""


@dataclass(frozen=True)
class Program:
    """One server under supervisord. `environment` is added to supervisord's own and is
    written to the configuration file: no secret in it."""

    name: str
    command: Sequence[str]
    priority: int  # start order; stopped in the reverse order
    environment: Mapping[str, str] = field(default_factory=dict)
    user: str | None = None  # run as this user (supervisord runs as root)
    stop_signal: str = "TERM"
    stop_as_group: bool = True  # the signal goes to the server's whole process group
    start_seconds: int = START_SECONDS


@dataclass(frozen=True)
class Supervisor:
    """The supervisord of one folder: its configuration, socket and logs."""

    root: Path
    logs_dir: Path

    @property
    def conf(self) -> Path:
        return self.root / "supervisord.conf"

    @property
    def socket(self) -> Path:
        return self.root / "supervisor.sock"

    @property
    def log(self) -> Path:
        return self.logs_dir / "supervisord.log"

    def program_log(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    @property
    def url(self) -> str:
        """How supervisorctl and the servers' `SUPERVISOR_SERVER_URL` name the socket."""
        return f"unix://{self.socket}"


def _value(text: str) -> str:
    """`text` as supervisord reads it back: `%` escaped (it expands `%(name)s`)."""
    return text.replace("%", "%%")


def _env_value(key: str, value: str) -> str:
    """A value of `environment=`: supervisord splits it at commas outside double quotes
    and has no escape for a double quote inside them."""
    if '"' in value:
        raise SupervisorError(f"{key}: a double quote cannot be passed in supervisord.conf")
    return _value(f'"{value}"')


def _section(title: str, options: Mapping[str, object]) -> str:
    lines = [f"[{title}]", *(f"{key}={value}" for key, value in options.items())]
    return "\n".join(lines) + "\n"


def _program_section(supervisor: Supervisor, program: Program) -> str:
    options: dict[str, object] = {
        "command": _value(shlex.join(program.command)),
        "directory": _value(str(supervisor.root)),
        "priority": program.priority,
        "autostart": "false",  # started in order by the stack, each once the last answers
        "autorestart": "true",
        "startsecs": program.start_seconds,
        "startretries": START_RETRIES,
        "stopsignal": program.stop_signal,
        "stopwaitsecs": STOP_SECONDS,
        "stopasgroup": str(program.stop_as_group).lower(),
        "killasgroup": "true",
        "redirect_stderr": "true",
        "stdout_logfile": _value(str(supervisor.program_log(program.name))),
        "stdout_logfile_maxbytes": LOG_MAX_BYTES,
        "stdout_logfile_backups": LOG_BACKUPS,
    }
    if program.user:
        options["user"] = program.user
    if program.environment:
        options["environment"] = ",".join(
            f"{key}={_env_value(key, value)}" for key, value in program.environment.items()
        )
    return _section(f"program:{program.name}", options)


def configuration(supervisor: Supervisor, programs: Sequence[Program]) -> str:
    """supervisord.conf: the daemon in `root`, its socket for the owner only, and one
    program per server with its restart policy and rotated log."""
    root = _value(str(supervisor.root))
    daemon = {
        "logfile": _value(str(supervisor.log)),
        "logfile_maxbytes": LOG_MAX_BYTES,
        "logfile_backups": LOG_BACKUPS,
        "pidfile": f"{root}/supervisord.pid",
        "directory": root,
        "childlogdir": _value(str(supervisor.logs_dir)),
        "identifier": f"olist-churn {root}",
    }
    if os.geteuid() == 0:
        daemon["user"] = "root"  # said, so that supervisord does not warn it kept root
    sections = [
        "; Written by olist-churn stack (olist_churn_dagster/stack/supervision.py)\n",
        _section("unix_http_server", {"file": _value(str(supervisor.socket)), "chmod": "0700"}),
        _section("supervisord", daemon),
        _section(
            "rpcinterface:supervisor",
            {"supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"},
        ),
        _section("supervisorctl", {"serverurl": _value(supervisor.url)}),
        *(_program_section(supervisor, p) for p in programs),
    ]
    return "\n".join(sections)


def write(supervisor: Supervisor, programs: Sequence[Program]) -> None:
    supervisor.logs_dir.mkdir(parents=True, exist_ok=True)
    supervisor.conf.write_text(configuration(supervisor, programs))


def rpc(supervisor: Supervisor) -> Any:
    """supervisord's XML-RPC interface on its socket (what supervisorctl calls)."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, supervisor.url)
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def answers(supervisor: Supervisor) -> bool:
    """Whether a supervisord serves this folder's socket."""
    try:
        return rpc(supervisor).getState()["statename"] == "RUNNING"
    except (OSError, xmlrpc.client.Error):
        return False


def start_daemon(supervisor: Supervisor, env: Mapping[str, str], timeout: float = 60) -> None:
    """supervisord in the background with `env`, which every server inherits."""
    command = [str(Path(sys.executable).parent / "supervisord"), "-c", str(supervisor.conf)]
    done = subprocess.run(
        command, env=dict(env), capture_output=True, text=True, check=False, timeout=timeout
    )
    if done.returncode != 0:
        raise SupervisorError(f"supervisord did not start: {done.stderr or done.stdout}")
    deadline = time.monotonic() + timeout
    while not answers(supervisor):
        if time.monotonic() > deadline:
            raise SupervisorError(f"supervisord does not answer on {supervisor.socket}")
        time.sleep(0.2)


def start(supervisor: Supervisor, name: str) -> int:
    """Start a program without waiting for `startsecs`; its pid."""
    try:
        rpc(supervisor).startProcess(name, False)
        return int(rpc(supervisor).getProcessInfo(name)["pid"])
    except (OSError, xmlrpc.client.Error) as exc:
        raise SupervisorError(f"supervisord could not start {name}: {exc}") from exc


@dataclass(frozen=True)
class ProgramState:
    """What supervisord says of a program, and how often it was (re)started."""

    name: str
    state: str  # RUNNING, STARTING, BACKOFF, STOPPED, EXITED, FATAL ...
    pid: int
    uptime: float  # seconds since its current process started (0 if not running)
    restarts: int  # starts after the first since supervisord started

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"


def _spawns(supervisor: Supervisor) -> dict[str, int]:
    """Processes spawned per program since supervisord last started, from its log."""
    try:
        text = supervisor.log.read_text(errors="replace")
    except OSError:
        return {}
    current = text.rpartition("supervisord started with pid")[2]
    counts: dict[str, int] = {}
    for name in re.findall(r"spawned: '([^']+)' with pid", current):
        counts[name] = counts.get(name, 0) + 1
    return counts


def states(supervisor: Supervisor) -> dict[str, ProgramState]:
    """Each program's state, uptime and restarts (empty if supervisord is not running)."""
    try:
        infos = rpc(supervisor).getAllProcessInfo()
    except (OSError, xmlrpc.client.Error):
        return {}
    spawns = _spawns(supervisor)
    return {
        info["name"]: ProgramState(
            name=info["name"],
            state=info["statename"],
            pid=int(info["pid"]),
            uptime=float(info["now"] - info["start"]) if info["pid"] else 0.0,
            restarts=max(spawns.get(info["name"], 0) - 1, 0),
        )
        for info in infos
    }


def _role(supervisor: Supervisor, proc: psutil.Process) -> str | None:
    """ "daemon" for this supervisord, "server" for a process it started or one of theirs
    (they inherit its socket URL in their environment), else None."""
    with contextlib.suppress(psutil.Error):
        if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if str(supervisor.conf) in proc.cmdline():
            return "daemon"
        if proc.environ().get("SUPERVISOR_SERVER_URL") == supervisor.url:
            return "server"
    return None


def processes(supervisor: Supervisor, role: str | None = None) -> list[psutil.Process]:
    """Live processes of this supervisord (`role` "daemon" or "server", or both): itself,
    its servers, and whatever they started, even orphans of a server that was killed (a
    run worker)."""
    found = []
    for proc in psutil.process_iter():
        found_role = _role(supervisor, proc)
        if found_role is not None and role in (None, found_role):
            found.append(proc)
    return found


def shutdown(supervisor: Supervisor, timeout: float, grace: float = 10.0) -> list[str]:
    """Stop every program, the highest priority first (each process group: its stop signal,
    SIGKILL after 30 s), and supervisord; then end what is left of the folder's processes
    (orphans of a killed server): SIGTERM, SIGKILL after `grace` s. A line per leftover."""
    daemons = processes(supervisor, "daemon")
    with contextlib.suppress(OSError, xmlrpc.client.Error):
        rpc(supervisor).shutdown()
    psutil.wait_procs(daemons, timeout=timeout)
    left = processes(supervisor)
    lines = []
    for proc in left:
        with contextlib.suppress(psutil.Error):
            lines.append(f"pid {proc.pid} left behind: {shlex.join(proc.cmdline())[:160]}")
            proc.terminate()
    _, alive = psutil.wait_procs(left, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)
    return lines
