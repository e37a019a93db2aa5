"""A reader that holds the warehouse file (a notebook, the DuckDB CLI, a BI tool) costs a
run nothing: the blocked step is retried by Dagster with a doubling wait and succeeds once
the reader closes; when it never closes, the run fails naming the process that holds it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from olist_churn_dagster.defs.warehouse import warehouse_resources
from olist_churn_dagster_tests.reliability.conftest import failure_message, run_job

pytestmark = pytest.mark.slow

READER = """
import sys, time, duckdb
conn = duckdb.connect(sys.argv[1], read_only=True)
print("READING", flush=True)
time.sleep(float(sys.argv[2]))
conn.close()
"""


@pytest.fixture()
def hold_warehouse(warehouse: Path) -> Iterator:
    """Start a process that opens the warehouse read-only for `seconds`."""
    readers: list[subprocess.Popen] = []

    def start(seconds: float) -> subprocess.Popen:
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, str(warehouse), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert reader.stdout is not None and reader.stdout.readline().strip() == "READING"
        readers.append(reader)
        return reader

    yield start
    for reader in readers:
        reader.kill()
        reader.wait()


def _step_events(result: dg.ExecuteInProcessResult, kind: dg.DagsterEventType) -> list:
    return [e for e in result.all_events if e.event_type == kind]


def _blocked_raw_load(
    definitions, warehouse, hold_warehouse, monkeypatch, *, hold: float, retries: int
):
    """The raw load while a reader holds the file for `hold` seconds: (reader, result,
    seconds the run took). Waits start at 1 s and double."""
    monkeypatch.setenv("OLIST_CHURN_LOCK_BACKOFF_SECONDS", "1")
    monkeypatch.setenv("OLIST_CHURN_LOCK_RETRIES", str(retries))
    reader = hold_warehouse(hold)
    started = time.monotonic()
    # The warehouse as a code location loaded with these settings has it.
    result = run_job(definitions, "load_raw_tables", resources=warehouse_resources(warehouse))
    return reader, result, time.monotonic() - started


def test_a_run_blocked_by_a_reader_succeeds_once_the_reader_closes(
    definitions, warehouse, hold_warehouse, monkeypatch: pytest.MonkeyPatch
):
    reader, result, elapsed = _blocked_raw_load(
        definitions, warehouse, hold_warehouse, monkeypatch, hold=4, retries=8
    )
    assert result.success, failure_message(result)
    assert reader.poll() is not None  # the reader had closed before the run could finish
    retries = _step_events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert retries, "the blocked step was not retried"
    text = " ".join(str(e.event_specific_data) for e in retries)
    assert f"PID {reader.pid}" in text  # the lock holder is named
    assert elapsed >= 3


def test_a_reader_that_never_closes_fails_the_run_naming_it(
    definitions, warehouse, hold_warehouse, monkeypatch: pytest.MonkeyPatch
):
    reader, result, elapsed = _blocked_raw_load(
        definitions, warehouse, hold_warehouse, monkeypatch, hold=120, retries=2
    )
    assert not result.success
    message = failure_message(result)
    assert "Exceeded max_retries of 2" in message
    assert f"is locked by PID {reader.pid}" in message and "close it" in message
    assert len(_step_events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 2
    assert elapsed >= 3  # waited 1 s, then 2 s, before giving up
