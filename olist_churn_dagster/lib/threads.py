"""The threads of a long backfill: compute the next piece while the current one is
written, and leave the cores to the work that must not wait."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# How much a background thread lowers its CPU priority (Linux nice).
BACKGROUND_NICENESS = 10

_DONE = object()


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """The items of `items`, each next one computed in a thread while the caller handles
    the current one: a backfill computes a batch while it writes the previous one, so on
    two cores a long backfill spends less time waiting on either. Holds one item more
    than the caller; an error of `items` is raised where the caller asks for that item.
    The thread inherits the caller's CPU priority (see `lower_thread_priority`)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
        pending = pool.submit(next, items, _DONE)
        while (item := pending.result()) is not _DONE:
            pending = pool.submit(next, items, _DONE)
            yield item


def lower_thread_priority(niceness: int = BACKGROUND_NICENESS) -> None:
    """Lowers the calling thread's CPU priority (on Linux niceness is per thread), and so
    that of the DuckDB and polars worker threads it starts, which inherit it. The scheduler
    weighs priorities only between threads that compete for a core: while Dagster's thread
    records a family's materializations, it is served before the next family's compute;
    when it waits, the compute still has every core. Elsewhere, or when refused, nothing."""
    if sys.platform != "linux":
        return
    thread = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, current + niceness))
    except OSError:
        pass
