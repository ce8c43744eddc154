"""Run a check inside a pytest test: its verdict becomes pytest's (pass, fail, skip)."""

from __future__ import annotations

import warnings

import pytest

from pytest_invarlock.checks import Check
from pytest_invarlock.errors import CheckFailed, CheckNotApplicable, ClaimNote, InvarlockNote
from pytest_invarlock.subjects import Subject


def run_check(subject: Subject, check: Check) -> None:
    """Run ``check`` on ``subject``; fail with the adapter, model and fix, or skip with why."""
    where = f"{subject.case.adapter} on {subject.case.model}: {check.__name__}"
    try:
        subject.call(check)
    except ClaimNote as exc:
        warnings.warn(InvarlockNote(f"{where}: {exc}"), stacklevel=2)
        return
    except CheckFailed as exc:
        failed = str(exc)
    except CheckNotApplicable as exc:
        skipped = str(exc)
    else:
        return
    if "failed" in locals():  # outside the except block: no chained traceback in the output
        pytest.fail(f"{where}: {failed}", pytrace=False)
    pytest.skip(f"{where} does not apply: {skipped}")
