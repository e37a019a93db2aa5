import dagster as dg
import pytest


@pytest.fixture(scope="module")
def instance_with_raw(definitions: dg.Definitions) -> dg.DagsterInstance:
    """An ephemeral instance on which the raw tables were just (re)loaded from data/raw
    (which registered their reference dates)."""
    instance = dg.DagsterInstance.ephemeral()
    result = definitions.resolve_job_def("load_raw_tables").execute_in_process(instance=instance)
    assert result.success
    return instance
