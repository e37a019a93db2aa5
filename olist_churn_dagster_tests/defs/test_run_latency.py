"""What a snapshot's run waits for before its first step: the sensor's tick, the run queue
and the run worker loading the code location."""

import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.instance.ref import InstanceRef
from dagster._core.run_coordinator import QueuedRunCoordinator

REPO_ROOT = Path(__file__).resolve().parents[2]
LAZY_LIBRARIES = ("mlflow", "xgboost", "matplotlib", "sklearn", "scipy", "shap", "pandas")


def _queue(folder: Path) -> tuple[int, int | None, int | None]:
    """The dequeue interval, run limit and default pool limit of the instance in `folder`."""
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(folder))) as instance:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        limits = instance.get_concurrency_config()
        assert limits.run_queue_config is not None
        return (
            instance.run_coordinator.dequeue_interval_seconds,
            limits.run_queue_config.max_concurrent_runs,
            limits.pool_config.default_pool_limit,
        )


def test_the_instance_dequeues_runs_every_second_and_keeps_its_limits(tmp_path: Path):
    shutil.copy(REPO_ROOT / "instance" / "dagster.yaml", tmp_path / "dagster.yaml")
    assert _queue(tmp_path) == (1, 4, 1)  # one warehouse writer at a time


def test_the_deployed_instance_dequeues_runs_every_second_too(tmp_path: Path):
    """deploy/dagster.yaml (and so `make stack`'s instance, written from it), with its
    Postgres, Docker and shared volume swapped for local ones so it loads here."""
    config = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    config["storage"] = {"sqlite": {"base_dir": str(tmp_path / "storage")}}
    config["run_launcher"] = {"module": "dagster", "class": "DefaultRunLauncher"}
    config["compute_logs"]["config"]["base_dir"] = str(tmp_path / "compute_logs")
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    assert _queue(tmp_path) == (1, 6, 6)  # DuckLake takes several writers


def test_the_snapshot_sensor_ticks_with_the_daemon_loop(definitions: dg.Definitions):
    # The sensor daemon evaluates sensors at most every 5 s; a longer interval only adds
    # to a snapshot's wait.
    assert definitions.resolve_sensor_def("snapshot_sensor").minimum_interval_seconds == 5


@pytest.mark.slow
def test_the_code_location_loads_without_the_ml_libraries():
    """Every run worker loads the code location before its first step: MLflow, XGBoost,
    matplotlib, SciPy and pandas (the IO manager's pandas handler) are imported by the
    steps that use them, not at load."""
    code = (
        "import sys, olist_churn_dagster.definitions as d; d.defs(); "
        f"print(sorted(m for m in {LAZY_LIBRARIES!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
