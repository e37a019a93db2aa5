"""`olist-churn prepare`: bring the warehouse to a state worth opening the UI on.

Runs the project's own jobs in process on the configured Dagster instance, so every run
shows in the UI's history like any other, and skips each step that is already done:
raw tables, every feature partition (one single-run backfill), the ABT and a champion
model, and the scores and risk digest of the most recent reference dates.

The terminal gets one line per stage and per finished step, with elapsed times; Dagster's
event stream goes to `logs/prepare.log` under the data directory (and to the instance's
event log, as for every run). A failed step's error is printed in full.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from olist_churn_dagster.defs.partitions import covering_range, registered_dates
from olist_churn_dagster.defs.tags import range_tags
from olist_churn_dagster.lib.ml.tracking import champion_version, sqlite_store_path
from olist_churn_dagster.lib.settings import Settings
from olist_churn_dagster.lib.tables import RISK_DIGEST_TABLE, SCORES_TABLE, feature_table
from olist_churn_dagster.lib.warehouse import open_warehouse, warehouse_exists


def load_definitions() -> dg.Definitions:
    from olist_churn_dagster.definitions import defs

    return defs() if callable(defs) else defs


def _count(settings: Settings, sql: str, params: list) -> int:
    if not warehouse_exists(settings.warehouse):
        return 0
    conn = open_warehouse(settings.warehouse, read_only=True)
    try:
        return int(conn.execute(sql, params).fetchone()[0])
    except Exception:  # a table that is not there yet counts as nothing done
        return 0
    finally:
        conn.close()


def _missing_feature_dates(settings: Settings, keys: list[str]) -> list[str]:
    """Partition keys without feature rows (one backfill covers first to last of them)."""
    if not warehouse_exists(settings.warehouse):
        return keys
    conn = open_warehouse(settings.warehouse, read_only=True)
    try:
        rows = conn.execute(
            f"SELECT DISTINCT reference_date FROM {feature_table('sales')}"
        ).fetchall()
    except Exception:  # no feature table yet
        return keys
    finally:
        conn.close()
    present = {r[0].isoformat() for r in rows}
    return [k for k in keys if k not in present]


def log_path(settings: Settings) -> Path:
    """Where `prepare` writes Dagster's event stream."""
    return settings.data_dir / "logs" / "prepare.log"


_PROGRESS_EVENTS = {
    dg.DagsterEventType.ASSET_MATERIALIZATION,
    dg.DagsterEventType.ASSET_CHECK_EVALUATION,
    dg.DagsterEventType.STEP_SUCCESS,
}


class StepProgress:
    """A line when an asset is materialized (its name, the partitions and the time since
    the stage started; a step of several unpartitioned assets gets one line), a line per
    failed check; passed checks are counted for the stage's closing line."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.restart()

    def restart(self) -> None:
        self.started = time.time()
        self.materialized: dict[str, int] = {}  # step -> unpartitioned assets materialized
        self.partitions: dict[str, set[str]] = {}  # asset -> partitions materialized
        self.current: dict[str, str] = {}  # step -> asset whose partitions it is recording
        self.checks_passed = 0

    def elapsed(self, at: float | None = None) -> float:
        return (time.time() if at is None else at) - self.started

    def _asset_done(self, asset: str, at: float) -> None:
        self.log(f"  {asset} ({len(self.partitions[asset])} dates, {self.elapsed(at):.1f} s)")

    def handle(self, event: dg.DagsterEvent, at: float) -> None:
        """Account for one event of the run, recorded at `at` (epoch seconds)."""
        key = event.step_key
        if key is None:
            return
        if event.is_step_materialization and event.partition is not None:
            # A multi-asset step records one asset's partitions after the other.
            asset = event.asset_key.to_user_string()
            previous = self.current.get(key)
            if previous is not None and previous != asset:
                self._asset_done(previous, at)
            self.current[key] = asset
            self.partitions.setdefault(asset, set()).add(event.partition)
        elif event.is_step_materialization:
            self.materialized[key] = self.materialized.get(key, 0) + 1
        elif event.event_type_value == dg.DagsterEventType.ASSET_CHECK_EVALUATION.value:
            check = event.asset_check_evaluation_data
            if check.passed:
                self.checks_passed += 1
            else:
                name = f"{check.asset_key.to_user_string()} {check.check_name}"
                severity = check.severity.value
                self.log(f"  check failed ({severity}): {name} ({self.elapsed(at):.1f} s)")
        elif event.is_step_success and key in self.current:
            self._asset_done(self.current.pop(key), at)
        elif event.is_step_success and key in self.materialized:
            assets = self.materialized.pop(key)
            what = f"{assets} assets, " if assets > 1 else ""
            self.log(f"  {key.replace('__', '/')} ({what}{self.elapsed(at):.1f} s)")


class RunWatcher(threading.Thread):
    """Feeds a run's progress events, read from the instance's event log as the run writes
    them, to a StepProgress; `stop` reads the last ones. (A @logger sees Dagster's events
    only through private attributes of its log records.)"""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, progress: StepProgress):
        super().__init__(name=f"progress-{run_id[:8]}", daemon=True)
        self.instance, self.run_id, self.progress = instance, run_id, progress
        self.cursor: str | None = None
        self.done = threading.Event()

    def read(self) -> None:
        """Hand every event recorded since the last read to the progress lines."""
        has_more = True
        while has_more:
            page = self.instance.get_records_for_run(
                self.run_id, cursor=self.cursor, of_type=_PROGRESS_EVENTS, limit=1000
            )
            for record in page.records:
                entry = record.event_log_entry
                if entry.dagster_event is not None:
                    self.progress.handle(entry.dagster_event, entry.timestamp)
            self.cursor, has_more = page.cursor, page.has_more

    def run(self) -> None:
        while not self.done.wait(0.5):
            self.read()

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.read()


def _prepare_logger(handlers: list[logging.Handler]) -> dg.LoggerDefinition:
    @dg.logger(description="Dagster's events to the prepare log file.")
    def prepare_logger(_context: dg.InitLoggerContext) -> logging.Logger:
        logger = logging.Logger("olist_churn.prepare", level=logging.DEBUG)
        for handler in handlers:
            logger.addHandler(handler)
        return logger

    return prepare_logger


def _failure_report(result: dg.ExecuteInProcessResult) -> str:
    errors = [
        f"step {event.step_key} failed:\n{event.step_failure_data.error.to_string()}"
        for event in result.all_events
        if event.is_step_failure and event.step_failure_data.error is not None
    ]
    return "\n".join(errors) or "no step failed; see the run's events"


class JobFailed(RuntimeError):
    """A job of `prepare` failed; the message holds every failed step's error in full."""


def _run(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    job_name: str,
    handlers: list[logging.Handler],
    progress: StepProgress,
    **kwargs,
) -> None:
    # The job's own loggers (Dagster's DEBUG console) are swapped for one that writes the
    # event log file; the progress lines come from the run's events in the instance, which
    # are the same as those of any launch.
    job = defs.resolve_job_def(job_name).with_logger_defs({"prepare": _prepare_logger(handlers)})
    run_id = str(uuid.uuid4())
    watcher = RunWatcher(instance, run_id, progress)
    watcher.start()
    try:
        result = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={"loggers": {"prepare": {}}},
            run_id=run_id,
            **kwargs,
        )
    finally:
        watcher.stop()
    if not result.success:
        raise JobFailed(
            f"job {job_name} failed (run {result.run_id}; its page in the UI has the events)\n"
            + _failure_report(result)
        )


def prepare(
    settings: Settings,
    instance: dg.DagsterInstance,
    log: Callable[[str], None] = print,
    log_file: Path | None = None,
) -> list[str]:
    """Run whatever of the main pipeline is missing; returns the steps it ran. The raw load
    registers the reference dates, so the later steps read them from the instance.
    Dagster's events go to `log_file` (default `log_path(settings)`), appended."""
    defs = load_definitions()
    done: list[str] = []
    log_file = log_file or log_path(settings)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    progress = StepProgress(log)

    def step(name: str, is_done: Callable[[], bool], job_name: str, **kwargs) -> None:
        if is_done():
            log(f"{name}: already there")
            return
        log(f"{name}: running job {job_name}")
        progress.restart()
        # What libraries print to stderr during the run (MLflow's store setup and model
        # registration, warnings) joins Dagster's events in the log file, through a file
        # of its own: Dagster closes its loggers' handlers when a run starts.
        handler = _log_file_handler(log_file)
        with (
            open(log_file, "a", encoding="utf-8", buffering=1) as stderr,
            contextlib.redirect_stderr(stderr),
        ):
            try:
                _run(defs, instance, job_name, [handler], progress, **kwargs)
            finally:
                handler.close()
        passed = progress.checks_passed
        checks = f", {passed} check{'s' * (passed != 1)} passed" if passed else ""
        log(f"{name}: done in {progress.elapsed():.1f} s{checks}")
        done.append(name)

    _steps(settings, instance, step)
    return done


def _log_file_handler(log_file: Path) -> logging.FileHandler:
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(
        logging.Formatter("%(asctime)s - %(levelname)s - %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    return handler


def _steps(settings: Settings, instance: dg.DagsterInstance, step: Callable[..., None]) -> None:
    step(
        "raw tables",
        lambda: (
            bool(registered_dates(instance))
            and _count(settings, "SELECT count(*) FROM raw.orders", []) > 0
        ),
        "load_raw_tables",
    )
    keys = registered_dates(instance)
    missing = _missing_feature_dates(settings, keys)
    step(
        f"feature store ({len(missing)} of {len(keys)} reference dates)",
        lambda: not missing,
        "build_feature_store",
        tags=range_tags(*covering_range(instance, missing)) if missing else {},
    )
    tracking_uri = settings.mlflow_tracking_uri
    store = sqlite_store_path(tracking_uri)
    step(
        "ABT, backtest and champion model",
        lambda: (
            (store is None or store.exists())
            and champion_version(tracking_uri) is not None
            and _count(settings, "SELECT count(*) FROM ml.backtest", []) > 0
        ),
        "train_churn_model",
    )
    recent = keys[-settings.rescore_days :]
    step(
        f"churn scores and risk digest ({len(recent)} latest dates)",
        lambda: all(
            _count(
                settings,
                f"SELECT count(*) FROM {table} WHERE reference_date = ?::DATE",
                [recent[-1]],
            )
            > 0
            for table in (SCORES_TABLE, RISK_DIGEST_TABLE)
        ),
        "rescore_with_champion",
        tags=range_tags(*covering_range(instance, recent)),
    )
