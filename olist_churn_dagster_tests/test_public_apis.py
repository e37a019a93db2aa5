"""The package uses Dagster's and MLflow's public APIs: an upgrade that moves a private
name breaks a test here, not a run. A private import is allowed only where no public one
exists, and says so on the line above it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "olist_churn_dagster"
PRIVATE_NAMES = (
    "_tracking_uri",
    "_registry_uri",
    "consume_logged_metadata",
    "step_context",
    "dagster_meta",
)


def _modules() -> list[Path]:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert modules, f"no modules under {PACKAGE}"
    return modules


def test_a_private_dagster_import_says_why_on_the_line_above():
    unexplained = []
    for path in _modules():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if not any(
                name.startswith(("dagster._", "mlflow.")) and "._" in name for name in names
            ):
                continue
            above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            if not above.startswith("# No public API"):
                unexplained.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not unexplained, f"private imports without '# No public API: ...' above: {unexplained}"


def test_no_private_attribute_of_dagster_or_mlflow_is_used():
    used = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.attr}"
        for path in _modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_NAMES
    ]
    assert not used, used
