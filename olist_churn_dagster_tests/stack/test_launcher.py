"""The stack's run launcher tells run monitoring whether a run's worker process lives: the
pid the worker announced in the run's event log, alive, gone, a zombie or reused."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import dagster as dg
import pytest
from dagster._core.events import EngineEventData
from dagster._core.launcher import WorkerStatus
from dagster._core.test_utils import create_run_for_test

from olist_churn_dagster.stack.launcher import LocalProcessRunLauncher, worker_gone

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(SLEEPER)
    yield proc
    proc.kill()
    proc.wait()


def test_a_live_worker_is_running_and_a_killed_one_is_gone(sleeper: subprocess.Popen[bytes]):
    announced = time.time()
    assert worker_gone(sleeper.pid, announced) is None
    sleeper.kill()
    time.sleep(0.5)
    assert "exited without ending its run" in (worker_gone(sleeper.pid, announced) or "")  # zombie
    sleeper.wait()
    assert "is gone" in (worker_gone(sleeper.pid, announced) or "")


def test_a_pid_now_held_by_a_younger_process_is_gone(sleeper: subprocess.Popen[bytes]):
    reused = worker_gone(sleeper.pid, announced_at=time.time() - 3600)
    assert reused is not None and "newer process" in reused


def test_the_health_of_a_run_follows_its_announced_worker(sleeper: subprocess.Popen[bytes]):
    with dg.instance_for_test() as instance:
        launcher = LocalProcessRunLauncher()
        launcher.register_instance(instance)
        assert launcher.supports_check_run_worker_health
        run = create_run_for_test(instance, job_name="a_job")
        not_yet = launcher.check_run_worker_health(run)
        assert not_yet.status == WorkerStatus.RUNNING  # the start timeout's business

        instance.report_engine_event(
            f"Started process for run (pid: {sleeper.pid}).",
            run,
            EngineEventData.in_process(sleeper.pid),
        )
        alive = launcher.check_run_worker_health(run)
        assert alive.status == WorkerStatus.RUNNING and alive.run_worker_id == str(sleeper.pid)
        sleeper.kill()
        sleeper.wait()
        # Its parent (the code server) gets the grace period to fail the run itself.
        waiting = launcher.check_run_worker_health(run)
        assert waiting.status == WorkerStatus.RUNNING and "waiting" in (waiting.msg or "")
        launcher.gone_grace_seconds = 0.0
        dead = launcher.check_run_worker_health(run)
        assert dead.status == WorkerStatus.FAILED
        assert f"pid {sleeper.pid}" in (dead.msg or "")
