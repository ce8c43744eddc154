"""Conformance: chunked snapshots: several chunks, repeated restores, and no stray files."""

import pytest

from pytest_invarlock.hf_adapter.checks import chunked
from pytest_invarlock.testing import run_check

pytestmark = pytest.mark.invarlock(chunked.CHECKS)


def test_chunked(invarlock_subject, invarlock_check):
    run_check(invarlock_subject, invarlock_check)
