"""Conformance: snapshot/restore round-trips are bit-exact (bytes and chunked)."""

import pytest

from pytest_invarlock.hf_adapter.checks import roundtrip
from pytest_invarlock.testing import run_check

pytestmark = pytest.mark.invarlock(roundtrip.CHECKS)


def test_roundtrip(invarlock_subject, invarlock_check):
    run_check(invarlock_subject, invarlock_check)
