"""Conformance: describe() against the truth from the config and storage identity."""

import pytest

from pytest_invarlock.hf_adapter.checks import describe
from pytest_invarlock.testing import run_check

pytestmark = pytest.mark.invarlock(describe.CHECKS)


def test_describe(invarlock_subject, invarlock_check):
    run_check(invarlock_subject, invarlock_check)
