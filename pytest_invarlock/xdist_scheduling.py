"""A pytest-xdist scheduler that sends each conformance case to one worker (``--dist loadgroup``).

Imported only from the plugin's ``pytest_xdist_make_scheduler`` hook, i.e. only on an xdist
controller run with ``--dist loadgroup``: it imports xdist.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

#: the parameter id of a conformance test: ``<implementation>-<model>-check_<behaviour>``
_CASE_TEST = re.compile(r"\[(?P<case>.+)-check_[A-Za-z0-9_]+\]$")


def case_scope(nodeid: str) -> str | None:
    """Return the case a conformance test's id names (``hf_causal-gpt2``), None for other tests."""
    found = _CASE_TEST.search(nodeid)
    return f"invarlock-case:{found['case']}" if found else None


def cases_in_collection_order(workqueue: Any, collection: list[str]) -> None:
    """Put the case work units first, in the workers' collection order (costliest first).

    xdist orders work units by their number of tests (``--loadscope-reorder``); every case has
    about the same number, so that order says nothing of how long a case takes, while the
    workers' collection lists the costliest cases first (see the plugin's ``_costliest_first``).
    Other groups follow in xdist's order.
    """
    position = {nodeid: i for i, nodeid in enumerate(collection)}

    def first(unit: Any) -> int:
        return min((position.get(n, len(position)) for n in unit), default=len(position))

    cases = sorted((s for s in workqueue if s.startswith("invarlock-case:")),
                   key=lambda s: first(workqueue[s]))
    others = [s for s in workqueue if not s.startswith("invarlock-case:")]
    units = {s: workqueue[s] for s in (*cases, *others)}
    workqueue.clear()
    workqueue.update(units)


def case_scheduler(config: pytest.Config, log: Any) -> Any:
    """Return ``LoadGroupScheduling`` whose groups are the conformance cases."""
    from xdist.scheduler import LoadGroupScheduling

    class CaseScheduling(LoadGroupScheduling):  # type: ignore[misc]
        """``loadgroup``, with every test of one (implementation, subject) in one work unit."""

        def _split_scope(self, nodeid: str) -> str:
            return case_scope(nodeid) or str(super()._split_scope(nodeid))

        def _assign_work_unit(self, node: Any) -> None:
            if not getattr(self, "_cases_ordered", False):
                self._cases_ordered = True
                cases_in_collection_order(self.workqueue, self.collection or [])
            super()._assign_work_unit(node)

    return CaseScheduling(config, log)
