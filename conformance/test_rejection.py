"""Conformance: bad snapshots are refused and leave the model bit-identical."""

import pytest

from pytest_invarlock.hf_adapter.checks import rejection
from pytest_invarlock.testing import run_check

pytestmark = pytest.mark.invarlock(rejection.CHECKS)


def test_rejection(invarlock_subject, invarlock_check):
    run_check(invarlock_subject, invarlock_check)
