"""Resident-memory checks for writes that run inside one transaction."""

from __future__ import annotations

import os


def resident_bytes() -> int:
    """The process's resident set size now (not its peak), from /proc."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def assert_flat(resident: list[int], batch_bytes: int) -> None:
    """Fails when memory measured after each of many batches grows with their number.

    Measured from the second batch on: DuckDB's own buffers fill up to its memory limit in
    the first. After that, the allocator and those buffers move by tens of MB either way,
    while each batch held until the commit adds at least its own size. The bound, half a
    batch per later batch, sits between the two with room on both sides."""
    assert len(resident) >= 10, "too few batches to tell a leak from noise"
    later_batches = len(resident) - 2
    growth = resident[-1] - resident[1]
    assert growth < later_batches / 2 * batch_bytes, [round(r / 1e6) for r in resident]
