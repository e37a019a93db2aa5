"""The deployment of docs/deploy.md, checked without a cluster: its instance file is a valid
Postgres + Docker-launcher instance, the code location loads with its settings (DuckLake
warehouse, MLflow server, multiprocess executor), and a job runs with that executor. The
same instance, less the launcher, runs for real in e2e/test_stack.py."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.instance.ref import InstanceRef
from dagster._serdes import class_from_code_pointer

from olist_churn_dagster_tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
PG_ENV = {
    "DAGSTER_PG_HOST": "postgres",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-secret",
}


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _code_location_environment() -> dict[str, str]:
    """The code location's environment in docker-compose.yml, secrets filled with dummies."""
    env = _compose()["services"]["code_location"]["environment"]
    return {k: "dummy" if str(v).startswith("${") else str(v) for k, v in env.items()}


@pytest.fixture
def deploy_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DAGSTER_HOME holding the deployment's dagster.yaml, its variables set."""
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    return tmp_path


def _resolved_class_config(data) -> dict:
    """The configured class's config, validated against its schema, variables resolved."""
    klass = class_from_code_pointer(data.module_name, data.class_name)
    result = process_config(klass.config_type(), data.config_dict)
    assert result.success, (data.class_name, [e.message for e in result.errors])
    return result.value


def test_instance_file_is_postgres_storage_with_the_docker_run_launcher(deploy_home: Path):
    ref = InstanceRef.from_dir(str(deploy_home))
    from dagster_postgres.utils import pg_url_from_config

    for data in (ref.run_storage_data, ref.event_storage_data, ref.schedule_storage_data):
        assert data.module_name == "dagster_postgres"
        url = pg_url_from_config(_resolved_class_config(data))
        assert url.startswith("postgresql://dagster:not-a-secret@postgres:5432/dagster")

    _resolved_class_config(ref.run_launcher_data)
    launcher = ref.run_launcher_data.rehydrate(object)
    assert type(launcher).__name__ == "DockerRunLauncher"
    assert launcher.networks == ["olist-churn"]
    assert launcher.container_kwargs["volumes"] == ["olist-churn-data:/data"]
    assert ref.compute_logs_data.config_dict["base_dir"].startswith("/data/")


def test_run_containers_get_every_setting_of_the_code_location(deploy_home: Path):
    ref = InstanceRef.from_dir(str(deploy_home))
    passed_on = set(ref.run_launcher_data.config_dict["env_vars"])
    compose = _compose()
    settings = set(compose["x-olist-settings"])
    assert settings <= passed_on, settings - passed_on
    assert set(PG_ENV) <= passed_on
    volume = compose["volumes"]["olist-churn-data"]["name"]
    assert ref.run_launcher_data.config_dict["container_kwargs"]["volumes"][0].startswith(volume)


def test_instance_file_queues_runs_and_pools_the_warehouse(deploy_home: Path):
    config, _ = dagster_instance_config(str(deploy_home))
    assert config["concurrency"]["runs"]["max_concurrent_runs"] >= 1
    assert config["concurrency"]["pools"]["default_limit"] > 1  # a server warehouse
    assert config["run_monitoring"]["enabled"] is True


def test_webserver_and_daemon_reach_the_code_location_served_by_compose():
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    (server,) = [entry["grpc_server"] for entry in workspace["load_from"]]
    code_location = _compose()["services"]["code_location"]
    assert server["host"] == "code_location"
    assert f"--port {server['port']}" in code_location["command"]
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert "--module-name olist_churn_dagster.definitions" in code_location["command"]
    assert 'module_name = "olist_churn_dagster.definitions"' in pyproject


LOAD_DEFINITIONS = """
import json
import re
import dagster as dg
from olist_churn_dagster.bootstrap import load_definitions

defs = load_definitions()
dg.Definitions.validate_loadable(defs)
repository = defs.get_repository_def()
print(json.dumps({
    "io_manager": defs.resources["io_manager"].database,
    "warehouse": defs.resources["warehouse"].database,
    "mlflow": defs.resources["mlflow"].tracking_uri,
    "executors": sorted({job.executor_def.name for job in repository.get_all_jobs()}),
    "jobs": sorted(job.name for job in repository.get_all_jobs()),
    "assets": len(list(defs.resolve_all_asset_keys())),
}))
"""


def _clean_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLIST_CHURN_")}
    env.update(extra)
    return env


@pytest.mark.slow
def test_definitions_load_with_the_deployment_settings(tmp_path: Path):
    settings = _code_location_environment()
    assert settings["OLIST_CHURN_DATA_DIR"] == "/data"
    settings["OLIST_CHURN_DATA_DIR"] = str(tmp_path)  # the volume, not mounted here
    done = subprocess.run(
        [sys.executable, "-c", LOAD_DEFINITIONS],
        env=_clean_environment(**settings),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["io_manager"] == loaded["warehouse"] == settings["OLIST_CHURN_WAREHOUSE"]
    assert loaded["warehouse"].startswith("ducklake:postgres:dbname=ducklake host=postgres")
    assert loaded["mlflow"] == settings["OLIST_CHURN_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert loaded["executors"] == ["multiprocess"]
    assert {"load_raw_tables", "build_feature_store", "rescore_with_champion"} <= set(
        loaded["jobs"]
    )
    assert loaded["assets"] > 10
    assert not any(tmp_path.iterdir()), "loading the definitions must not write state"


@pytest.mark.slow
def test_a_job_runs_with_the_multiprocess_executor(tmp_path: Path, demo_raw_dir: Path):
    """The executor setting is all it takes: a real run, a process per step, on a local
    instance whose `warehouse` pool keeps the DuckDB file to one writer at a time."""
    data_dir, home = tmp_path / "data", tmp_path / "dagster_home"
    shutil.copytree(demo_raw_dir, data_dir / "raw")
    home.mkdir()
    shutil.copy(REPO_ROOT / "instance" / "dagster.yaml", home / "dagster.yaml")
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "job",
            "execute",
            "-m",
            "olist_churn_dagster.definitions",
            "-j",
            "load_raw_tables",
            # Two of its steps (the load and one check): every step process loads the
            # code location, so all 14 would take minutes here.
            "-o",
            "raw_tables,raw_table_checks",
        ],
        env=_clean_environment(
            OLIST_CHURN_DATA_DIR=str(data_dir),
            OLIST_CHURN_EXECUTOR="multiprocess",
            DAGSTER_HOME=str(home),
        ),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    import dagster as dg
    import duckdb

    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        messages = [e.message or "" for e in instance.all_logs(run.run_id)]
    assert any("multiprocess executor" in m for m in messages)
    started = [m for m in messages if m.startswith("Launching subprocess for")]
    assert len(started) == 2, "each step in its own process"

    orders = sum(1 for _ in (data_dir / "raw" / "olist_orders_dataset.csv").open()) - 1
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM raw.orders").fetchone()[0] == orders


# A URL carrying a password (scheme, user, colon, password, at sign), whatever it is.
_URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:([^/\s@'\"]+)@")
# Values a test or a template may show in the password's place.
_PLACEHOLDERS = {"not-a-secret", "change-me"}


def test_no_command_line_of_the_deployment_carries_the_password():
    """A command line is readable by every local user (`ps`) and shown by `docker inspect`:
    each service gets the password from its environment (PGPASSWORD for libpq), never in
    its command."""
    services = _compose()["services"]
    for name, service in services.items():
        command = str(service.get("command", ""))
        assert "PASSWORD" not in command, f"{name}'s command names a password"
        assert not _URL_WITH_PASSWORD.search(command), f"{name}'s command holds a URL password"
    mlflow = services["mlflow"]
    assert "postgresql://dagster@postgres:5432/mlflow" in mlflow["command"]
    assert mlflow["environment"]["PGPASSWORD"].startswith("${DAGSTER_PG_PASSWORD")


def test_the_repository_holds_no_secret():
    """No tracked file holds a filled-in `.env`, or a URL with a password other than the
    placeholders of the tests and templates."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True, text=True
    ).stdout.split("\0")
    assert tracked and "deploy/.env.example" in tracked
    assert not [path for path in tracked if Path(path).name == ".env"], "a .env is tracked"
    found = []
    for path in filter(None, tracked):
        try:
            text = (REPO_ROOT / path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for match in _URL_WITH_PASSWORD.finditer(text):
            if match.group(1) not in _PLACEHOLDERS and not match.group(1).startswith("${"):
                found.append(f"{path}: {match.group(0)}")
    assert not found, found


def test_the_secret_pattern_finds_a_password_in_a_url():
    written = "postgresql://dagster:" + "hunter22" + "@postgres:5432/mlflow"  # not in the file
    assert _URL_WITH_PASSWORD.search(written)
    assert not _URL_WITH_PASSWORD.search("postgresql://dagster@postgres:5432/mlflow")
    assert not _URL_WITH_PASSWORD.search("http://127.0.0.1:5000/api")
