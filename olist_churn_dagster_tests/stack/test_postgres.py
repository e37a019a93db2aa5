"""The local Postgres server the stack and its tests run on."""

from __future__ import annotations

import contextlib
import os
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
    again = postgres.start(postgres_server.data_dir, postgres_server.port, postgres_server.password)
    assert again == postgres_server
    assert postgres_server.password not in repr(again)


def psql(server: postgres.PostgresServer, host: str, password: str | None) -> str:
    """`psql` to `server` through `host` (127.0.0.1, or the socket's folder) with `password`
    or none (no password file, no prompt). The answer, or the error Postgres gave."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSFILE"] = os.devnull
    if password is not None:
        env[postgres.PASSWORD_ENV] = password
    command = [str(postgres.bin_dir() / "psql"), "-w", "-h", host, "-p", str(server.port)]
    done = subprocess.run(
        [*command, "-U", postgres.SUPERUSER, "-d", "postgres", "-tAc", "SELECT 'in'"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else done.stderr


@pytest.mark.parametrize("through", ["tcp", "socket"])
def test_a_connection_without_the_password_is_refused(
    postgres_server: postgres.PostgresServer, through: str
):
    host = postgres.HOST if through == "tcp" else str(postgres_server.data_dir)
    assert "no password supplied" in psql(postgres_server, host, None)
    wrong = psql(postgres_server, host, postgres_server.password + "x")
    assert f'password authentication failed for user "{postgres.SUPERUSER}"' in wrong
    assert psql(postgres_server, host, postgres_server.password) == "in"


def test_a_wrong_password_is_refused_to_psycopg(postgres_server: postgres.PostgresServer):
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(postgres_server.libpq("postgres"), password="not-the-password")
    with contextlib.closing(
        psycopg2.connect(postgres_server.libpq("postgres"), password=postgres_server.password)
    ) as conn:
        assert conn.server_version > 0


def test_a_folder_that_trusts_connections_is_refused(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    (data / "pg_hba.conf").write_text(
        "# comment: trust\nlocal all all trust\nhost all all 127.0.0.1/32 trust\n"
    )
    with pytest.raises(postgres.PostgresError, match=r"without a password.*local all all trust"):
        postgres.start(data, 5, "secret")


def test_the_password_file_is_generated_once_and_the_owners_only(tmp_path: Path):
    path = tmp_path / "password"
    first = postgres.read_or_create_password(path)
    assert len(first) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert postgres.read_or_create_password(path) == first
    assert postgres.read_or_create_password(tmp_path / "other") != first
    path.chmod(0o644)
    with pytest.raises(postgres.PostgresError, match="readable by others"):
        postgres.read_or_create_password(path)


def test_a_folder_postgres_cannot_reach_is_named(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(postgres.os, "geteuid", lambda: 0)
    tmp_path.chmod(0o700)
    with pytest.raises(postgres.PostgresError, match="closed to other users"):
        postgres.start(tmp_path / "data", 5, "secret")
