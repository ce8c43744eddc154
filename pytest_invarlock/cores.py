"""Share the machine's cores among pytest-xdist workers while conformance tests run.

torch sizes its intra-op thread pool to every core of the machine, in every process. Under
``pytest -n N`` that is N pools of C threads on C cores: the threads spin against each other and
a check runs several times slower than alone (measured on 2 cores with ``-n 2``: twice the CPU
time for the same work, the default lane slower than ``-n 0``). pytest-xdist leaves threads to
the tests, so while a conformance test runs on a worker, torch gets that worker's share of the
cores, and its own setting back afterwards: the user's other tests in the same run are not
affected. A user who sets ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` has decided, and is left
alone.

torch is only touched when already imported (the core never imports it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: environment variables by which a user sets torch's thread count: theirs to decide
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: cgroup v2 CPU quota of a container ("max 100000" when unlimited)
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cores() -> int:
    """Return how many cores this process may run on (affinity, and a container's CPU quota)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    quota = _quota()
    return max(1, min(count, quota)) if quota is not None else count


def _quota() -> int | None:
    """Return the cgroup v2 CPU quota in whole cores, None when there is none or no cgroup."""
    try:
        limit, _, period = CPU_MAX.read_text().strip().partition(" ")
        return None if limit == "max" else max(1, int(limit) // int(period))
    except (OSError, ValueError, ZeroDivisionError):
        return None


def worker_share(workerinput: dict[str, Any] | None) -> int | None:
    """Return the threads one xdist worker should use, or None when it is not one to limit."""
    if workerinput is None or any(v in os.environ for v in THREAD_VARIABLES):
        return None
    workers = int(workerinput.get("workercount", 1) or 1)
    return max(1, cores() // workers) if workers > 1 else None


@contextmanager
def threads(limit: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op threads at most ``limit``; restore them after."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None and limit is not None else None
    if torch is None or limit is None or before is None or before <= limit:
        yield
        return
    torch.set_num_threads(limit)
    try:
        yield
    finally:
        torch.set_num_threads(before)
