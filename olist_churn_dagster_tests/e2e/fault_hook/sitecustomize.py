"""Imported by every Python process of the fault tests' stack (this folder is on their
PYTHONPATH): lets a test stop a run worker in the middle of a DuckLake write.

With `STACK_FAULT_HOOK_DIR` set, `olist_churn_dagster.lib.warehouse.write_frame` is
wrapped as the module is imported. A write into the `features` schema, once its rows are
inserted inside the step's open transaction, takes the file `hold` of that folder if there
is one and names that table or none (a rename, so one writer only), announces itself in
`held` ("<pid> <table>") and waits there, before its commit, until the test creates
`release` (or kills the process). Without `hold` every write goes on untouched.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import time
from pathlib import Path

HOOK_DIR_ENV = "STACK_FAULT_HOOK_DIR"
TARGET = "olist_churn_dagster.lib.warehouse"
HOLD_SECONDS = 600


def _take(path: Path, table: str = "") -> bool:
    """Whether this process took the file (renamed it), if it names `table` or nothing."""
    try:
        if path.read_text().strip() not in ("", table):
            return False
        path.rename(path.with_name(path.name + ".taken"))
    except FileNotFoundError:
        return False
    return True


def _hold(folder: Path, table: str) -> None:
    announce = folder / "held.tmp"
    announce.write_text(f"{os.getpid()} {table}\n")
    announce.rename(folder / "held")
    deadline = time.monotonic() + HOLD_SECONDS
    while not _take(folder / "release") and time.monotonic() < deadline:
        time.sleep(0.1)


def _patch(module, folder: Path) -> None:
    original = module.write_frame

    def write_frame(conn, schema, table, frame, **kwargs):
        original(conn, schema, table, frame, **kwargs)
        if schema == "features" and _take(folder / "hold", table):
            _hold(folder, table)

    module.write_frame = write_frame


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module) -> None:
            run_module(module)
            _patch(module, self.folder)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get(HOOK_DIR_ENV):
    sys.meta_path.insert(0, _PatchOnImport(Path(os.environ[HOOK_DIR_ENV])))
