"""Conformance: load_model and can_handle: dtype, remote code, recognition."""

import pytest

from pytest_invarlock.hf_adapter.checks import loading
from pytest_invarlock.testing import run_check

pytestmark = pytest.mark.invarlock(loading.CHECKS)


def test_loading(invarlock_subject, invarlock_check):
    run_check(invarlock_subject, invarlock_check)
