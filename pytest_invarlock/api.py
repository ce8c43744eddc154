"""Run checks from Python, without pytest: ``check_adapter`` in the manner of ``check_estimator``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_invarlock.hf_adapter.checks import Check, CheckContext, all_checks
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
                  checks: Iterable[Check] | None = None, device: str = "cpu",
                  reference: bool = False, strict: bool = False,
                  timeout: float = DEFAULT_TIMEOUT,
                  expected_failures: ExpectedFailures | None = None) -> list[Result]:
    """Load ``model_path`` with ``adapter`` once and run ``checks`` (default: all) on it.

    ``strict`` makes SHOULD findings failures; ``timeout`` bounds each check in seconds (0:
    unbounded). ``expected_failures`` maps a check name, or ``(check name, model label)``, to
    the reason it is known to fail: such a failure is reported as ``xfailed``, and a pass as
    ``xpassed``.
    """
    subject = _subject(adapter, model_path, device, reference, Policy(strict, timeout))
    results = [_run(subject, c) for c in (all_checks() if checks is None else checks)]
    return [_expect(r, expected_failures or {}) for r in results]


def _subject(adapter: Any, model_path: str | os.PathLike[str], device: str,
             reference: bool, policy: Policy = DEFAULT_POLICY) -> Any:
    from pytest_invarlock.hf_adapter import state
    from pytest_invarlock.registry import instance_label
    from pytest_invarlock.hf_adapter.planning import Case, Subject
    from pytest_invarlock.verdicts import bounded

    path = str(model_path)
    label = Path(path).name
    model = bounded(policy.load_timeout, lambda: adapter.load_model(path, device=device))
    selector = f"{type(adapter).__module__}:{type(adapter).__qualname__}"
    name = instance_label(adapter)
    ctx = CheckContext(adapter_name=name, model_label=label, model_path=path,
                       device=device, reference=reference, selector=selector)
    return Subject(Case(name, selector, label, path), adapter, model, ctx,
                   state.capture(model), policy)


def _expect(result: Result, expected: ExpectedFailures) -> Result:
    reason = expected.get((result.check, result.model), expected.get(result.check))
    if reason is None or result.outcome not in ("failed", "passed"):
        return result
    outcome = "xfailed" if result.outcome == "failed" else "xpassed"
    return Result(result.adapter, result.model, result.check, outcome, reason, result.level)


_SUBJECTS: dict[tuple[int, str], Any] = {}


def parametrize_with_checks(adapters: Sequence[Any], models: Sequence[str | os.PathLike[str]],
                            *, checks: Iterable[Check] | None = None) -> Any:
    """Return a ``pytest.mark.parametrize`` over (adapter, model, check) for your own tests.

    Use it with :func:`verify`, in the manner of scikit-learn's ``parametrize_with_checks``::

        @parametrize_with_checks([MyAdapter()], ["/path/to/checkpoint"])
        def test_my_adapter(adapter, model, check):
            verify(adapter, model, check)
    """
    import pytest

    chosen = list(all_checks() if checks is None else checks)
    params = [(a, str(m), c) for a in adapters for m in models for c in chosen]
    from pytest_invarlock.registry import instance_label

    ids = [f"{instance_label(a)}-{Path(m).name}-{c.__name__}" for a, m, c in params]
    return pytest.mark.parametrize(("adapter", "model", "check"), params, ids=ids)


def verify(adapter: Any, model: str | os.PathLike[str], check: Check, *,
           device: str = "cpu", strict: bool = False) -> None:
    """Run one check inside a pytest test; the model is loaded once per (adapter, model).

    A SHOULD finding passes (recorded as a finding by the plugin's report hook) unless
    ``strict``.
    """
    from pytest_invarlock.testing import run_check

    key = (id(adapter), str(model), strict)
    if key not in _SUBJECTS:
        _SUBJECTS[key] = _subject(adapter, model, device, reference=False,
                                  policy=Policy(strict=strict))
    run_check(_SUBJECTS[key], check)


def _run(subject: Any, check: Check) -> Result:
    verdict = judge(subject, check, subject.policy)
    return Result(subject.case.adapter, subject.case.model, check.__name__, verdict.outcome,
                  verdict.message, verdict.level)
