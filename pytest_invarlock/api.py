"""Run checks from Python, without pytest: ``check_adapter`` in the manner of ``check_estimator``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_invarlock.checking import Check
from pytest_invarlock.profile import Case, Env, Profile, Subject, owner, profiles
from pytest_invarlock.verdicts import DEFAULT_POLICY, DEFAULT_TIMEOUT, Policy, judge


@dataclass(frozen=True)
class Result:
    """The verdict of one check, with its level and the reason.

    ``outcome`` is ``passed``, ``failed``, ``finding`` (a SHOULD check failed; ``failed`` under
    ``strict``), ``skipped`` (not applicable), ``unjudged`` (the suite has no truth for this
    model), ``error`` (the check crashed or an adapter call hung), ``xfailed`` or ``xpassed``.
    """

    adapter: str
    model: str
    check: str
    outcome: str
    reason: str
    level: str = "MUST"


#: (check) or (check, model label) -> reason; the check fails as expected (xfail).
ExpectedFailures = Mapping[str | tuple[str, str], str]


def check_adapter(adapter: Any, model_path: str | os.PathLike[str], *,
                  checks: Iterable[Check[Any]] | None = None, device: str = "cpu",
                  reference: bool = False, strict: bool = False,
                  timeout: float = DEFAULT_TIMEOUT,
                  expected_failures: ExpectedFailures | None = None) -> list[Result]:
    """Load ``model_path`` with ``adapter`` once and run ``checks`` (default: all) on it.

    ``strict`` makes SHOULD findings failures; ``timeout`` bounds each check in seconds (0:
    unbounded). ``expected_failures`` maps a check name, or ``(check name, model label)``, to
    the reason it is known to fail: such a failure is reported as ``xfailed``, and a pass as
    ``xpassed``.
    """
    chosen = None if checks is None else list(checks)
    profile = _profile(adapter, chosen)
    subject = _subject(adapter, model_path, device, reference, Policy(strict, timeout), profile)
    results = [_run(subject, c) for c in (profile.checks() if chosen is None else chosen)]
    return [_expect(r, expected_failures or {}) for r in results]


def _profile(adapter: Any, checks: list[Check[Any]] | None) -> Profile[Any]:
    """Return the profile of the checks, else the first whose protocol ``adapter`` implements."""
    if checks:
        return owner(checks)
    for profile in profiles():
        if all(hasattr(adapter, m) for m in profile.requirements.members):
            return profile
    return profiles()[0]


def _subject(adapter: Any, model_path: str | os.PathLike[str], device: str,
             reference: bool, policy: Policy = DEFAULT_POLICY,
             profile: Profile[Any] | None = None) -> Subject[Any]:
    """Load the subject through the same loader as the pytest path."""
    from pytest_invarlock.registry import instance_label
    from pytest_invarlock.subjects import load_subject

    profile = profile or _profile(adapter, None)
    path = str(model_path)
    cls = adapter if isinstance(adapter, type) else type(adapter)  # a class: TL adapters
    selector = f"{cls.__module__}:{cls.__qualname__}"
    label = selector if isinstance(adapter, type) else instance_label(adapter)
    case = Case(profile.name, label, selector, Path(path).name, path, source="path")
    return load_subject(profile, case, adapter, Env(device, Path.cwd(), reference), policy)


def _label(adapter: Any) -> str:
    """Return what records call an implementation: ``module:Class`` for a class passed as such."""
    from pytest_invarlock.registry import instance_label

    if isinstance(adapter, type):
        return f"{adapter.__module__}:{adapter.__qualname__}"
    return instance_label(adapter)


def _expect(result: Result, expected: ExpectedFailures) -> Result:
    reason = expected.get((result.check, result.model), expected.get(result.check))
    if reason is None or result.outcome not in ("failed", "passed"):
        return result
    outcome = "xfailed" if result.outcome == "failed" else "xpassed"
    return Result(result.adapter, result.model, result.check, outcome, reason, result.level)


_SUBJECTS: dict[tuple[int, str, bool], Subject[Any]] = {}


def parametrize_with_checks(adapters: Sequence[Any], models: Sequence[str | os.PathLike[str]],
                            *, checks: Iterable[Check[Any]] | None = None) -> Any:
    """Return a ``pytest.mark.parametrize`` over (adapter, model, check) for your own tests.

    Use it with :func:`verify`, in the manner of scikit-learn's ``parametrize_with_checks``::

        @parametrize_with_checks([MyAdapter()], ["/path/to/checkpoint"])
        def test_my_adapter(adapter, model, check):
            verify(adapter, model, check)
    """
    import pytest

    chosen = None if checks is None else list(checks)
    params = [(a, str(m), c) for a in adapters for m in models
              for c in (_profile(a, None).checks() if chosen is None else chosen)]

    ids = [f"{_label(a)}-{Path(m).name}-{c.__name__}" for a, m, c in params]
    return pytest.mark.parametrize(("adapter", "model", "check"), params, ids=ids)


def verify(adapter: Any, model: str | os.PathLike[str], check: Check[Any], *,
           device: str = "cpu", strict: bool = False) -> None:
    """Run one check inside a pytest test; the model is loaded once per (adapter, model).

    A SHOULD finding passes (recorded as a finding by the plugin's report hook) unless
    ``strict``.
    """
    from pytest_invarlock.testing import run_check

    key = (id(adapter), str(model), strict)
    if key not in _SUBJECTS:
        _SUBJECTS[key] = _subject(adapter, model, device, reference=False,
                                  policy=Policy(strict=strict), profile=owner([check]))
    run_check(_SUBJECTS[key], check)


def _run(subject: Subject[Any], check: Check[Any]) -> Result:
    verdict = judge(subject, check, subject.policy)
    return Result(subject.case.adapter, subject.case.model, check.__name__, verdict.outcome,
                  verdict.message, verdict.level)
