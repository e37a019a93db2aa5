"""The settings resource: read from the environment once, where the code location builds
it, and shown with its values on the UI's resource page."""

from __future__ import annotations

import ast
from datetime import date, time
from pathlib import Path

import dagster as dg
import pytest

from olist_churn_dagster.defs.settings import ChurnSettings, churn_settings
from olist_churn_dagster.lib.settings import load_settings
from olist_churn_dagster_tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "olist_churn_dagster"


def _configured(definitions: dg.Definitions, key: str) -> dict[str, object]:
    """A resource's config values as the UI's resource page shows them."""
    resource = definitions.get_repository_def().get_top_level_resources()[key]
    return resource.config_schema.as_field().default_value


def test_the_loaded_definitions_show_the_environments_settings(
    definitions: dg.Definitions, data_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    from olist_churn_dagster.bootstrap import load_definitions

    assert isinstance(definitions.resources["settings"], ChurnSettings)
    assert _configured(definitions, "settings")["data_dir"] == str(data_dir)
    monkeypatch.setenv("OLIST_CHURN_WINDOW_DAYS", "90")
    monkeypatch.setenv("OLIST_CHURN_LOCK_RETRIES", "2")
    reloaded = load_definitions()
    shown = _configured(reloaded, "settings")
    assert shown["feature_window_days"] == 90 and shown["lock_retries"] == 2
    assert shown["data_dir"] == str(data_dir)
    # The warehouse resources are built from the same read.
    assert _configured(reloaded, "warehouse")["lock_retries"] == 2
    assert _configured(definitions, "settings")["feature_window_days"] == 180


def test_one_read_per_environment(monkeypatch: pytest.MonkeyPatch):
    first = churn_settings()
    assert churn_settings() is first
    monkeypatch.setenv("OLIST_CHURN_RESCORE_DAYS", str(first.rescore_days + 3))
    changed = churn_settings()
    assert changed is not first and changed.rescore_days == first.rescore_days + 3


def test_the_resource_gives_back_the_typed_settings(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setenv("OLIST_CHURN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OLIST_CHURN_PARTITION_START", "2017-03-01")
    monkeypatch.setenv("OLIST_CHURN_SCORES_DEADLINE_UTC", "05:30")
    monkeypatch.setenv("OLIST_CHURN_ALERT_WEBHOOK_URL", "https://chat.example/hook")
    settings = load_settings()
    resource = ChurnSettings.from_settings(settings)
    assert resource.partition_start == "2017-03-01" and resource.raw_as_of is None
    typed = resource.to_settings()
    assert typed == settings
    assert typed.partition_start == date(2017, 3, 1)
    assert typed.scores_deadline_utc == time(5, 30)
    assert typed.alerts_file == tmp_path / "alerts" / "alerts.jsonl"


def _modules_calling(name: str) -> set[str]:
    calls = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if called == name:
                    calls.add(path.relative_to(PACKAGE).as_posix())
    return calls


def test_only_the_settings_resource_and_the_cli_read_the_environment():
    """Assets, checks, sensors and definition-time code take the settings resource (or
    `churn_settings`), so one read serves the whole code location."""
    assert _modules_calling("load_settings") == {"defs/settings.py", "cli.py"}


def test_the_webhook_is_shown_by_its_variable_and_read_from_it(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """A webhook URL is a credential: the resource page names the variable, while the
    alerts and the digest still post to the URL it holds."""
    from olist_churn_dagster.bootstrap import load_definitions

    url = "https://chat.example/hooks/T000/B000/secret-token"
    monkeypatch.setenv("OLIST_CHURN_ALERT_WEBHOOK_URL", url)
    definitions = load_definitions()
    shown = _configured(definitions, "settings")
    assert url not in repr(shown)
    assert shown["alert_webhook_url"] == {"env": "OLIST_CHURN_ALERT_WEBHOOK_URL"}
    resource = definitions.resources["settings"]
    assert resource.webhook_url == url and resource.to_settings().alert_webhook_url == url
    with dg.build_resources({"settings": resource}) as built:
        assert built.settings.webhook_url == url
