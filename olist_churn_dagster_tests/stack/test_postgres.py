"""The local Postgres server the stack and its tests run on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from olist_churn_dagster.stack import postgres


def test_a_created_database_accepts_connections(postgres_server: postgres.PostgresServer):
    postgres.create_database(postgres_server, "probe")
    postgres.create_database(postgres_server, "probe")  # a second call is a no-op
    psql = postgres.bin_dir() / "psql"
    answer = subprocess.run(
        [
            str(psql),
            "-h",
            postgres.HOST,
            "-p",
            str(postgres_server.port),
            "-U",
            "postgres",
            "-d",
            "probe",
            "-tAc",
            "SELECT current_database()",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert answer.stdout.strip() == "probe"
    assert postgres.is_running(postgres_server.data_dir)


def test_starting_twice_reuses_the_running_server(postgres_server: postgres.PostgresServer):
    again = postgres.start(postgres_server.data_dir, postgres_server.port)
    assert again == postgres_server


def test_a_folder_postgres_cannot_reach_is_named(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(postgres.os, "geteuid", lambda: 0)
    tmp_path.chmod(0o700)
    with pytest.raises(postgres.PostgresError, match="closed to other users"):
        postgres.start(tmp_path / "data", 5)
