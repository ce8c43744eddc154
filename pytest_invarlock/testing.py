"""Run a check inside a pytest test: its verdict becomes pytest's (pass, fail, skip, error).

A SHOULD finding raises :class:`ShouldFinding`, which the plugin's report hook turns into a
pass carrying the finding (the record's outcome is ``finding``); a truth gap raises
:class:`SuiteCannotJudge`, a skip the records mark ``unjudged``.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from pytest_invarlock.checking import Check
from pytest_invarlock.errors import InvarlockNote
from pytest_invarlock.profile import Subject
from pytest_invarlock.verdicts import judge


class ShouldFinding(pytest.skip.Exception):  # type: ignore[name-defined,misc]
    """A SHOULD-level check failed outside strict mode: shown and recorded, the test passes.

    A skip underneath, so ``--pdb`` does not stop on it and, with the plugin disabled, a
    finding is a skip with its message rather than a failure.
    """


class SuiteCannotJudge(pytest.skip.Exception):  # type: ignore[name-defined,misc]
    """The suite has no truth for this model: its own gap, never the adapter's failure."""


def run_check(subject: Subject[Any], check: Check[Any]) -> None:
    """Run ``check`` on ``subject``; fail with the adapter, model and fix, or skip with why."""
    where = f"{subject.case.adapter} on {subject.case.model}: {check.__name__}"
    verdict = judge(subject, check, subject.policy)
    if verdict.outcome == "passed":
        if verdict.message:
            warnings.warn(InvarlockNote(f"{where}: {verdict.message}"), stacklevel=2)
        return
    if verdict.outcome == "failed":
        pytest.fail(f"{where}: {verdict.message}", pytrace=False)
    if verdict.outcome == "finding":
        raise ShouldFinding(f"{where}: SHOULD: {verdict.message}")
    if verdict.outcome == "skipped":
        pytest.skip(f"{where} does not apply: {verdict.message}")
    if verdict.outcome == "unjudged":
        raise SuiteCannotJudge(f"{where}: {verdict.message}")
    assert verdict.exception is not None
    try:  # the record keeps the call that failed, the traceback keeps the rest
        verdict.exception.invarlock_message = f"{where}: {verdict.message}"  # type: ignore[attr-defined]
    except AttributeError:
        pass
    raise verdict.exception
