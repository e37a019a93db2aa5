"""The markers that `make test-fast` leaves out land on the tests the conftest names."""

from olist_churn_dagster_tests.conftest import SLOW, TESTS_DIR, markers_for


def test_every_slow_entry_names_a_test_file_or_function():
    for entry in SLOW:
        path, _, name = entry.partition("::")
        file = TESTS_DIR / path
        assert file.is_file(), entry
        assert not name or f"def {name}(" in file.read_text(), entry


def test_markers_by_folder_file_and_function():
    assert markers_for("e2e/test_browser.py", "test_partitions_page") == ["e2e"]
    assert markers_for("reliability/test_faults.py", "test_anything") == ["slow"]
    assert markers_for("reliability/test_bad_input.py", "test_anything") == []
    slow_one = "test_a_job_runs_with_the_multiprocess_executor"
    assert markers_for("test_deploy.py", slow_one) == ["slow"]
    assert markers_for("test_deploy.py", "test_instance_file_loads") == []
    assert markers_for("test_bootstrap.py", "test_anything") == ["slow"]
    assert markers_for("lib/test_abt.py", "test_anything") == []
