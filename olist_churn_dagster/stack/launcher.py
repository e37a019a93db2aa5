"""The stack's run launcher: Dagster's default one, which also tells run monitoring whether
a run's worker process is still alive.

With the default launcher a run worker is a subprocess of the code server on this
machine, and Dagster cannot see it die: a worker killed mid-run (the out-of-memory killer,
a stray SIGKILL) leaves its run STARTED for ever, its partitions never written and its
backfill never done. The worker announces its pid in the run's event log ("Started process
for run (pid: N)"); this launcher reports the worker FAILED once that process is gone (or
a zombie, or the pid now belongs to a younger process). Run monitoring then fails the run
and run retries start it again, as Docker's and Kubernetes' launchers allow.
"""

from __future__ import annotations

import psutil
from dagster import DagsterEventType, DagsterRun
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus

# The worker's own announcement (dagster/_grpc/impl.py, dagster/_cli/api.py).
STARTED_PROCESS = "Started process for run"
# Clock slack between the process's start time and its announcement's timestamp.
CLOCK_SLACK_SECONDS = 2.0


class LocalProcessRunLauncher(DefaultRunLauncher):
    """`DefaultRunLauncher` whose run workers run monitoring can check (see the module)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        """RUNNING until the worker's pid is known (a run not yet started is the start
        timeout's job) and while that process lives; FAILED once it is gone."""
        announced = self._worker(run)
        if announced is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no run worker announced yet")
        pid, since = announced
        gone = worker_gone(pid, since)
        if gone:
            return CheckRunHealthResult(WorkerStatus.FAILED, gone, run_worker_id=str(pid))
        return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))

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
