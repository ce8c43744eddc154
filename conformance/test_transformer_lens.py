"""Conformance: TransformerLens architecture adapters against tiny real models (lane tl-cpu).

Deselected in every other lane: the transformer_lens profile runs in tl-cpu only.
"""

import pytest

from pytest_invarlock.testing import run_check
from pytest_invarlock.tl import checks

pytestmark = [pytest.mark.invarlock(checks.CHECKS), pytest.mark.invarlock_lanes("tl-cpu")]


def test_transformer_lens(invarlock_subject, invarlock_check):
    run_check(invarlock_subject, invarlock_check)
