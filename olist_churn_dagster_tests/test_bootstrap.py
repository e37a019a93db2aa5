"""`olist-churn prepare` as `make run` runs it, in a subprocess on a fresh data directory:
a line per stage and step on the terminal, Dagster's events in the log file, a failed step's
error in full."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from olist_churn_dagster_tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def _prepare(data: Path) -> subprocess.CompletedProcess[str]:
    home = data / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "instance" / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "OLIST_CHURN_DATA_DIR": str(data),
        "DAGSTER_HOME": str(home),
        "OLIST_CHURN_WINDOW_DAYS": "180",
    }
    return subprocess.run(
        [sys.executable, "-m", "olist_churn_dagster.cli", "prepare"],
        cwd=data,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _log_lines(data: Path) -> list[str]:
    return (data / "logs" / "prepare.log").read_text().splitlines()


def test_a_failed_step_prints_its_error_in_full_and_its_events_go_to_the_log(
    tmp_path: Path, demo_raw_dir: Path
):
    data = tmp_path / "data"
    shutil.copytree(demo_raw_dir, data / "raw")
    (data / "raw" / "olist_sellers_dataset.csv").unlink()

    done = _prepare(data)

    assert done.returncode == 1
    assert done.stdout.splitlines() == ["raw tables: running job load_raw_tables"]
    assert done.stderr.startswith("olist-churn prepare: job load_raw_tables failed (run ")
    assert "InputDataError: olist_sellers_dataset.csv: file(s) not found" in done.stderr
    assert "Stack Trace:" in done.stderr  # the error in full, not a summary
    assert done.stderr.splitlines()[-1].endswith(str(data / "logs" / "prepare.log"))
    assert "DEBUG" not in done.stdout + done.stderr
    log = _log_lines(data)
    assert any(" - RUN_START - " in line for line in log)
    assert any(" - STEP_FAILURE - " in line for line in log)


def test_prepare_builds_everything_quietly_then_skips_it(tmp_path: Path, demo_raw_dir: Path):
    data = tmp_path / "data"
    shutil.copytree(demo_raw_dir, data / "raw")

    first = _prepare(data)

    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) <= 40, first.stdout
    for stage in ("raw tables", "feature store", "ABT, backtest and champion model", "churn"):
        assert any(line.startswith(stage) and ": done in " in line for line in lines), stage
    sales = next(line for line in lines if line.startswith("  features/seller_sales ("))
    assert " dates, " in sales
    assert int(sales.split("(")[1].split()[0]) > 100  # every reference date in one run
    assert any(line.startswith("  raw_tables (9 assets, ") for line in lines)
    assert lines[-4].startswith("prepared raw tables, feature store")
    assert lines[-2] == f"  events log: {data / 'logs' / 'prepare.log'}"
    assert lines[-1] == "  Dagster UI: http://127.0.0.1:3000 (`make run` serves it)"
    assert not first.stderr.strip(), first.stderr  # MLflow's and Dagster's chatter: in the log
    assert "DEBUG" not in first.stdout
    log = _log_lines(data)
    assert len(log) > 10 * len(lines)
    assert sum(" - ASSET_MATERIALIZATION - " in line for line in log) > 100
    assert {"load_raw_tables", "build_feature_store", "train_churn_model"} <= {
        line.split(" - ")[2] for line in log if " - RUN_SUCCESS - " in line
    }

    again = _prepare(data)

    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[:5] == [
        "raw tables: already there",
        next(line for line in again.stdout.splitlines() if line.startswith("feature store")),
        "ABT, backtest and champion model: already there",
        next(line for line in again.stdout.splitlines() if line.startswith("churn scores")),
        "already prepared",
    ]
    assert again.stdout.count("already there") == 4

    # The model store lost (the tables kept): prepare trains again, as its first job.
    shutil.rmtree(data / "mlflow")
    retrained = _prepare(data)

    assert retrained.returncode == 0, retrained.stderr
    assert retrained.stdout.splitlines()[:3] == [
        "raw tables: already there",
        next(line for line in retrained.stdout.splitlines() if line.startswith("feature store")),
        "ABT, backtest and champion model: running job train_churn_model",
    ]
    assert not retrained.stderr.strip(), retrained.stderr
