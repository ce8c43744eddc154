"""Conformance: a snapshot is a value: self-contained, portable to a fresh process, bit-exact."""

import pytest

from pytest_invarlock.hf_adapter.checks import values
from pytest_invarlock.testing import run_check

pytestmark = pytest.mark.invarlock(values.CHECKS)


def test_values(invarlock_subject, invarlock_check):
    run_check(invarlock_subject, invarlock_check)
