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


def case_scheduler(config: pytest.Config, log: Any) -> Any:
    """Return ``LoadGroupScheduling`` whose groups are the conformance cases."""
    from xdist.scheduler import LoadGroupScheduling

    class CaseScheduling(LoadGroupScheduling):  # type: ignore[misc]
        """``loadgroup``, with every test of one (implementation, subject) in one work unit."""

        def _split_scope(self, nodeid: str) -> str:
            return case_scope(nodeid) or str(super()._split_scope(nodeid))

    return CaseScheduling(config, log)
