"""The stack's run launcher: Dagster's default one, which also tells run monitoring whether
a run's worker process is still alive.

With the default launcher a run worker is a subprocess of the code server on this
machine, and Dagster cannot see it die: a worker killed mid-run (the out-of-memory killer,
a stray SIGKILL) leaves its run STARTED for ever, its partitions never written and its
backfill never done. The code server that started a worker fails its run
when it sees the process exit (its cleanup thread, within a second), but a worker whose
code server was restarted meanwhile is nobody's child any more. The worker announces its
pid in the run's event log ("Started process for run (pid: N)"); this launcher reports the
worker FAILED once that process has been gone (or a zombie, or the pid reused by a younger
process) for GONE_GRACE_SECONDS, which leaves the code server its turn first (two failure
events would make two alerts). Run monitoring then fails the run and run retries start it
again, as Docker's and Kubernetes' launchers allow.
"""

from __future__ import annotations

import time

import psutil
from dagster import DagsterEventType, DagsterRun, DefaultRunLauncher

# No public API: run monitoring's health check returns these, exported by no public module.
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus

# The worker's own announcement (dagster/_grpc/impl.py, dagster/_cli/api.py).
STARTED_PROCESS = "Started process for run"
# Clock slack between the process's start time and its announcement's timestamp.
CLOCK_SLACK_SECONDS = 2.0
# How long a worker is seen gone before this launcher reports it (two monitoring polls).
GONE_GRACE_SECONDS = 10.0


class LocalProcessRunLauncher(DefaultRunLauncher):
    """`DefaultRunLauncher` whose run workers run monitoring can check (see the module)."""

    gone_grace_seconds: float = GONE_GRACE_SECONDS

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        """RUNNING until the worker's pid is known (a run not yet started is the start
        timeout's job) and while that process lives; FAILED once it has been gone for the
        grace period."""
        announced = self._worker(run)
        if announced is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no run worker announced yet")
        pid, since = announced
        gone = worker_gone(pid, since)
        if gone is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))
        first_seen = self._gone_since.setdefault(run.run_id, time.monotonic())
        if time.monotonic() - first_seen < self.gone_grace_seconds:
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"{gone}; waiting for its parent")
        return CheckRunHealthResult(WorkerStatus.FAILED, gone, run_worker_id=str(pid))

    @property
    def _gone_since(self) -> dict[str, float]:
        """When this process first saw each run's worker gone."""
        if not hasattr(self, "_gone_seen"):
            self._gone_seen: dict[str, float] = {}
        return self._gone_seen

    def _worker(self, run: DagsterRun) -> tuple[int, float] | None:
        """The pid of the run's latest worker and when it announced itself."""
        records = self._instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.ENGINE_EVENT, ascending=False
        ).records
        for record in records:
            entry = record.event_log_entry
            event = entry.dagster_event
            if not entry.message.startswith(STARTED_PROCESS) or event is None:
                continue
            pid = event.engine_event_data.metadata.get("pid")
            if pid is not None:
                return int(pid.value), entry.timestamp
        return None


def worker_gone(pid: int, announced_at: float) -> str | None:
    """Why process `pid`, which announced itself at `announced_at`, is no longer the run's
    worker; None while it is."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return f"run worker (pid {pid}) exited without ending its run"
        if proc.create_time() > announced_at + CLOCK_SLACK_SECONDS:
            return f"run worker (pid {pid}) is gone; the pid belongs to a newer process"
    except psutil.NoSuchProcess:
        return f"run worker (pid {pid}) is gone without ending its run (killed?)"
    return None
