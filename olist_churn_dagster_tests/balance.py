"""Module order for `make test-fast`: the heaviest modules first.

`--dist loadfile` hands whole modules to the workers in the order of the collection (with
`--no-loadscope-reorder`; by default pytest-xdist puts the modules with the most tests
first, which leaves a long module of few tests, such as the model path's, for the end,
running alone on one worker while the other is idle). Here each module weighs the seconds
its selected tests took when they last ran (kept in pytest's cache, `.pytest_cache/`), so
the long ones start first and the short ones fill both workers up to the end. A test that
never ran weighs nothing; without a cache the order is the collection's.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

CACHE_KEY = "olist-churn/test-seconds"

_seconds: defaultdict[str, float] = defaultdict(float)


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _distributed(config: pytest.Config) -> bool:
    return config.getoption("dist", "no") != "no" or hasattr(config, "workerinput")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cache = getattr(config, "cache", None)
    if cache is None or not _distributed(config):
        return
    last: dict[str, float] = cache.get(CACHE_KEY, {})
    weight: defaultdict[str, float] = defaultdict(float)
    for item in items:
        weight[_module(item.nodeid)] += last.get(item.nodeid, 0.0)
    items.sort(key=lambda item: -weight[_module(item.nodeid)])  # stable: in-module order kept


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _seconds[report.nodeid] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller (or a run without workers) records what each test took."""
    cache = getattr(session.config, "cache", None)
    if cache is None or hasattr(session.config, "workerinput") or not _seconds:
        return
    cache.set(CACHE_KEY, {**cache.get(CACHE_KEY, {}), **_seconds})
