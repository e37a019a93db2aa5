"""Code versions follow the settings and the source of the modules behind an asset."""

import sys

import pytest

from olist_churn_dagster.lib import versions
from olist_churn_dagster.lib.versions import code_version, feature_code_version


def test_a_feature_version_names_its_settings_and_follows_them() -> None:
    version = feature_code_version("sales", window_days=180, horizon_days=45)
    assert version.startswith("horizon_days=45,window_days=180,code=")
    assert version == feature_code_version("sales", window_days=180, horizon_days=45)
    assert version != feature_code_version("sales", window_days=90, horizon_days=45)
    assert version != feature_code_version("reviews", window_days=180, horizon_days=45)


def test_a_change_to_a_module_changes_the_version(tmp_path, monkeypatch) -> None:
    package = tmp_path / "versioned_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    module = package / "rows.py"
    module.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(versions, "PACKAGE", "versioned_pkg")
    before = code_version(["rows"])
    module.write_text("X = 2\n")
    assert code_version(["rows"]) != before
    assert "versioned_pkg.rows" not in sys.modules  # found, never imported
    with pytest.raises(ValueError, match=r"no module versioned_pkg\.missing"):
        code_version(["missing"])


def test_git_commit_names_the_checkout_and_never_fails_without_one(tmp_path, monkeypatch) -> None:
    import re

    commit = versions.git_commit()  # the repository the tests run from
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", commit)
    assert versions.git_commit(tmp_path) is None  # not a repository
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert versions.git_commit() is None


def test_the_catalogue_hash_follows_every_entry() -> None:
    from dataclasses import replace

    from olist_churn_dagster.lib.features import FEATURE_CATALOGUE

    specs = list(FEATURE_CATALOGUE)
    digest = versions.catalogue_hash(specs)
    assert len(digest) == 64 and digest == versions.catalogue_hash(tuple(specs))
    assert versions.catalogue_hash(specs[:-1]) != digest
    assert versions.catalogue_hash(specs[::-1]) != digest
    renamed = [replace(specs[0], unit="weeks"), *specs[1:]]
    assert versions.catalogue_hash(renamed) != digest
