"""Conformance: quantized adapters quantize for real, describe it, snapshot early, load alike."""

import pytest

from pytest_invarlock.hf_adapter.checks import quantized
from pytest_invarlock.testing import run_check

pytestmark = pytest.mark.invarlock(quantized.CHECKS)


def test_quantized(invarlock_subject, invarlock_check):
    run_check(invarlock_subject, invarlock_check)
