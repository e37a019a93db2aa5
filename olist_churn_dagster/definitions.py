"""The code location: everything under `defs/`, loaded by workspace.yaml and pyproject."""

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        # One process per run: DuckDB allows one writer process per file, and the heavy
        # work inside each step is already vectorised over all cores.
        dg.Definitions(executor=dg.in_process_executor),
    )
