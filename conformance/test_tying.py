"""Conformance: tied weights stay tied after load, .to() and restore."""

import pytest

from pytest_invarlock.hf_adapter.checks import tying
from pytest_invarlock.testing import run_check

pytestmark = pytest.mark.invarlock(tying.CHECKS)


def test_tying(invarlock_subject, invarlock_check):
    run_check(invarlock_subject, invarlock_check)
