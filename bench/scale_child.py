"""One scale of a benchmark in its own interpreter (`bench/pipeline.py`, `bench/features.py`),
so each scale's peak memory is its own and the parent's figures hold nothing of it."""

from __future__ import annotations

import json
import subprocess
import sys


def run_scale_child(script: str, scale: float, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs `script --child SCALE ARGS...` with this interpreter and captures its output; the
    child prints its result as JSON on its last line (`scale_result`)."""
    return subprocess.run(
        [sys.executable, script, "--child", str(scale), *args], capture_output=True, text=True
    )


def scale_result(out: subprocess.CompletedProcess[str]) -> object:
    """The JSON result a child printed last; a failed child raises `CalledProcessError`
    (its `stderr` holds the child's error)."""
    out.check_returncode()
    return json.loads(out.stdout.strip().splitlines()[-1])
