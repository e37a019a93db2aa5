"""The markers `make test-fast` leaves out sit on the tests themselves: `slow` on each slow
test (or module), `e2e` on every module of the e2e folder. A new e2e module without its
marker would run its servers and browser in the fast loop, so these checks read the
modules' source (no import: the e2e modules need selenium and servers)."""

from __future__ import annotations

import ast
from pathlib import Path

from olist_churn_dagster_tests.conftest import TESTS_DIR

E2E_DIR = TESTS_DIR / "e2e"


def module_marks(path: Path) -> list[str]:
    """The marker names of a module-level `pytestmark = ...` (one mark or a list of them)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            value = node.value
            marks = value.elts if isinstance(value, ast.List | ast.Tuple) else [value]
            return [ast.unparse(m).removeprefix("pytest.mark.") for m in marks]
    return []


def test_every_e2e_module_declares_the_e2e_marker():
    modules = sorted(E2E_DIR.rglob("test_*.py"))
    assert modules, f"no test modules under {E2E_DIR}"
    unmarked = [
        p.relative_to(TESTS_DIR).as_posix() for p in modules if "e2e" not in module_marks(p)
    ]
    assert not unmarked, f"add `pytestmark = pytest.mark.e2e` to {unmarked}"


def test_the_e2e_marker_stays_in_the_e2e_folder():
    outside = [
        p.relative_to(TESTS_DIR).as_posix()
        for p in TESTS_DIR.rglob("test_*.py")
        if not p.is_relative_to(E2E_DIR)
        and p != Path(__file__)
        and "pytest.mark.e2e" in p.read_text()
    ]
    assert not outside, f"the e2e marker means the e2e folder; move {outside} there"


def test_module_marks_reads_one_mark_or_a_list(tmp_path: Path):
    one, both, none = (tmp_path / f"{n}.py" for n in ("one", "both", "none"))
    one.write_text("import pytest\n\npytestmark = pytest.mark.e2e\n")
    both.write_text("import pytest\n\npytestmark = [pytest.mark.e2e, pytest.mark.slow]\n")
    none.write_text("import pytest\n\nmark = pytest.mark.e2e\n")
    assert module_marks(one) == ["e2e"]
    assert module_marks(both) == ["e2e", "slow"]
    assert module_marks(none) == []
