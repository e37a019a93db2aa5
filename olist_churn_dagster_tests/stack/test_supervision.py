"""supervisord as the stack runs it, on stand-in servers (small Python processes): a server
that dies comes back, one that keeps dying at start is given up, logs are kept, and
shutdown leaves no process, not even the orphan of a killed server."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from olist_churn_dagster.stack import supervision

# A server that prints its pid and a secret it inherited, and, with an argument, starts a
# child (a run worker, say) that outlives it.
SERVER = """
import os, subprocess, sys, time
print("serving as", os.getpid(), "secret", os.environ.get("STAND_IN_SECRET"), flush=True)
if sys.argv[1:] == ["with-child"]:
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
time.sleep(600)
"""


@pytest.fixture
def supervisor() -> Iterator[supervision.Supervisor]:
    """A folder with a short path (a UNIX socket's is at most 107 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="sv-"))
    found = supervision.Supervisor(root=root, logs_dir=root / "logs")
    try:
        yield found
    finally:
        supervision.shutdown(found, timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def _programs(supervisor: supervision.Supervisor) -> list[supervision.Program]:
    python, server = sys.executable, supervisor.root / "server.py"
    server.write_text(SERVER)
    return [
        supervision.Program("daemon", [python, str(server)], priority=20, start_seconds=1),
        supervision.Program(
            "code_server",
            [python, str(server), "with-child"],
            priority=10,
            environment={"WHERE": "100% stand-in, 'quoted' = yes"},
            start_seconds=1,
        ),
        supervision.Program("broken", [python, "-c", "raise SystemExit(3)"], priority=30),
    ]


def _wait(what: str, probe, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, f"{what} after {timeout} s"
        time.sleep(0.2)
    return value


def _running(supervisor: supervision.Supervisor, name: str, not_pid: int = 0):
    state = supervision.states(supervisor).get(name)
    return state if state and state.running and state.pid != not_pid else None


def test_a_killed_server_comes_back_with_its_log_and_shutdown_leaves_nothing(
    supervisor: supervision.Supervisor,
):
    supervision.write(supervisor, _programs(supervisor))
    conf = supervisor.conf.read_text()
    assert "autorestart=true" in conf and "stopasgroup=true" in conf
    assert "secret-value" not in conf
    supervision.start_daemon(supervisor, {**os.environ, "STAND_IN_SECRET": "secret-value"})
    assert supervision.answers(supervisor)
    assert all(s.state == "STOPPED" for s in supervision.states(supervisor).values())

    for name in ("code_server", "daemon"):
        supervision.start(supervisor, name)
    first = _wait("the code server running", lambda: _running(supervisor, "code_server"))
    code_server = psutil.Process(first.pid)
    orphan = _wait("its child", code_server.children)[0]
    env = code_server.environ()
    assert env["WHERE"] == "100% stand-in, 'quoted' = yes"
    assert env["STAND_IN_SECRET"] == "secret-value", "servers inherit supervisord's environment"

    code_server.send_signal(signal.SIGKILL)
    second = _wait("a new code server", lambda: _running(supervisor, "code_server", first.pid))
    assert second.restarts == 1 and supervision.states(supervisor)["daemon"].restarts == 0
    assert orphan.is_running(), "the killed server's child lives on (a run worker finishing)"
    log = supervisor.program_log("code_server").read_text()
    assert f"serving as {first.pid} secret secret-value" in log
    assert f"serving as {second.pid}" in log
    assert "terminated by SIGKILL; not expected" in supervisor.log.read_text()

    seen = supervision.processes(supervisor)
    assert {orphan.pid, second.pid} <= {p.pid for p in seen}
    left = supervision.shutdown(supervisor, timeout=60)
    assert [line for line in left if str(orphan.pid) in line], left
    assert not orphan.is_running() and not supervision.processes(supervisor)
    assert not supervision.answers(supervisor)
    assert supervision.states(supervisor) == {}


def test_a_server_that_keeps_dying_at_start_is_given_up(supervisor: supervision.Supervisor):
    supervision.write(supervisor, _programs(supervisor))
    supervision.start_daemon(supervisor, dict(os.environ))
    supervision.rpc(supervisor).startProcess("broken", False)
    fatal = _wait(
        "FATAL",
        lambda: (s := supervision.states(supervisor)["broken"]).state == "FATAL" and s,
        timeout=90,
    )
    assert fatal.restarts == supervision.START_RETRIES  # a bounded number of tries
    assert "gave up: broken entered FATAL state" in supervisor.log.read_text()
