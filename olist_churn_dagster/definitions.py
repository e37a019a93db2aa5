"""The code location: everything under `defs/`, loaded by workspace.yaml and pyproject."""

from pathlib import Path

import dagster as dg

from olist_churn_dagster.defs.settings import churn_settings

# `in_process` (default): one process per run, since a local DuckDB file has one writer
# process and the heavy work inside each step is already vectorised over all cores.
# `multiprocess`: a process per step, for a server warehouse that takes several writers;
# the `warehouse` pool of the instance still caps how many steps write at once.
EXECUTOR_DEFS: dict[str, dg.ExecutorDefinition] = {
    "in_process": dg.in_process_executor,
    "multiprocess": dg.multiprocess_executor,
}


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        dg.Definitions(executor=EXECUTOR_DEFS[churn_settings().executor]),
    )
