"""Run a check inside a pytest test: its verdict becomes pytest's (pass, fail, skip)."""

from __future__ import annotations

import pytest

from pytest_invarlock.checks import Check
from pytest_invarlock.errors import CheckFailed, CheckNotApplicable
from pytest_invarlock.subjects import Subject


def run_check(subject: Subject, check: Check) -> None:
    """Run ``check`` on ``subject``; fail with the adapter, model and fix, or skip with why."""
    where = f"{subject.case.adapter} on {subject.case.model}"
    try:
        subject.call(check)
    except CheckFailed as exc:
        pytest.fail(f"{where}: {check.__name__}: {exc}", pytrace=False)
    except CheckNotApplicable as exc:
        pytest.skip(f"{where}: {check.__name__} does not apply: {exc}")
