"""Conformance: restore and the read-only calls keep objects, flags, modes, hooks and storage."""

import pytest

from pytest_invarlock.hf_adapter.checks import preservation
from pytest_invarlock.testing import run_check

pytestmark = pytest.mark.invarlock(preservation.CHECKS)


def test_preservation(invarlock_subject, invarlock_check):
    run_check(invarlock_subject, invarlock_check)
