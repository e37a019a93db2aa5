import os
import threading
from collections.abc import Iterator

import pytest

from olist_churn_dagster.lib.threads import lower_thread_priority, read_ahead


def test_read_ahead_computes_the_next_item_while_the_caller_holds_the_current_one():
    started = [threading.Event() for _ in range(3)]

    def items() -> Iterator[int]:
        for number, event in enumerate(started):
            event.set()
            yield number

    seen = []
    for item in read_ahead(items()):
        if item + 1 < len(started):
            # Without reading ahead, the next item is only started when asked for.
            assert started[item + 1].wait(timeout=10), f"item {item + 1} not started"
        seen.append(item)
    assert seen == [0, 1, 2]


def test_read_ahead_raises_an_error_where_its_item_is_asked_for():
    def items() -> Iterator[int]:
        yield 1
        raise ValueError("batch 2 is broken")

    ahead = read_ahead(items())
    assert next(ahead) == 1
    with pytest.raises(ValueError, match="batch 2 is broken"):
        next(ahead)


def test_read_ahead_stops_reading_when_the_caller_stops():
    produced = []

    def items() -> Iterator[int]:
        for number in range(100):
            produced.append(number)
            yield number

    ahead = read_ahead(items())
    assert next(ahead) == 0
    ahead.close()  # as a failed write does
    assert produced == [0, 1]
    assert not [t for t in threading.enumerate() if t.name.startswith("read-ahead")]


def test_a_background_thread_and_its_workers_run_at_a_lower_priority():
    # Linux niceness is per thread: the caller's own thread keeps its own.
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    step = niceness()
    seen: dict[str, int] = {}

    def background() -> None:
        lower_thread_priority(5)
        seen["thread"] = niceness()
        worker = threading.Thread(target=lambda: seen.update(worker=niceness()))
        worker.start()
        worker.join()

    thread = threading.Thread(target=background)
    thread.start()
    thread.join()
    assert seen == {"thread": min(19, step + 5), "worker": min(19, step + 5)}
    assert niceness() == step
