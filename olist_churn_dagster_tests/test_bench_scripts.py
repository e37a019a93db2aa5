"""Every benchmark script under `bench/` still imports and builds its command line: no test
runs them, so a broken import (a renamed helper, a moved module) would otherwise show only
when someone next runs `make bench`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


@pytest.fixture
def bench_on_path(monkeypatch: pytest.MonkeyPatch, data_dir: Path):
    """`bench/` first on the path, as when a script runs (they import each other), and the
    modules the scripts import from it forgotten afterwards. The session's data directory
    is set first: `trivial_location.py` reads the settings when imported."""
    monkeypatch.syspath_prepend(str(BENCH))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if (getattr(sys.modules[name], "__file__", None) or "").startswith(str(BENCH)):
            del sys.modules[name]


def test_the_bench_folder_has_the_scripts():
    assert {"user_backfill.py", "pipeline.py", "live_loop.py"} <= {s.name for s in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_a_bench_script_imports_and_prints_its_help(
    script: Path, bench_on_path: None, monkeypatch: pytest.MonkeyPatch, capsys
):
    spec = importlib.util.spec_from_file_location(f"bench_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "main"):  # a module the scripts share, or a code location
        return
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as done:
        module.main()
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out
