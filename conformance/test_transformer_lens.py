"""Conformance: TransformerLens architecture adapters against tiny real models (lane tl-cpu)."""

import pytest

from pytest_invarlock.testing import run_check
from pytest_invarlock.tl import checks

pytestmark = pytest.mark.invarlock(checks.CHECKS)


def test_transformer_lens(invarlock_subject, invarlock_check):
    run_check(invarlock_subject, invarlock_check)
