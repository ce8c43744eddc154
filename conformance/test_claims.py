"""Conformance: declared capabilities are valid and kept (adapter-capabilities-v1)."""

import pytest

from pytest_invarlock.hf_adapter.checks import claims
from pytest_invarlock.testing import run_check

pytestmark = pytest.mark.invarlock(claims.CHECKS)


def test_claims(invarlock_subject, invarlock_check):
    run_check(invarlock_subject, invarlock_check)
