"""Run checks from Python, without pytest: ``check_adapter`` in the manner of ``check_estimator``."""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_invarlock.checks import Check, CheckContext, all_checks
from pytest_invarlock.errors import CheckFailed, CheckNotApplicable, ClaimNote


@dataclass(frozen=True)
class Result:
    """The verdict of one check: passed, failed, skipped or error, with the reason."""

    adapter: str
    model: str
    check: str
    outcome: str
    reason: str


#: (check) or (check, model label) -> reason; the check fails as expected (xfail).
ExpectedFailures = Mapping[str | tuple[str, str], str]


def check_adapter(adapter: Any, model_path: str | os.PathLike[str], *,
                  checks: Iterable[Check] | None = None, device: str = "cpu",
                  reference: bool = False,
                  expected_failures: ExpectedFailures | None = None) -> list[Result]:
    """Load ``model_path`` with ``adapter`` once and run ``checks`` (default: all) on it.

    ``expected_failures`` maps a check name, or ``(check name, model label)``, to the reason it
    is known to fail: such a failure is reported as ``xfailed``, and a pass as ``xpassed``.
    """
    subject = _subject(adapter, model_path, device, reference)
    results = [_run(subject, c) for c in (all_checks() if checks is None else checks)]
    return [_expect(r, expected_failures or {}) for r in results]


def _subject(adapter: Any, model_path: str | os.PathLike[str], device: str,
             reference: bool) -> Any:
    from pytest_invarlock import state
    from pytest_invarlock.subjects import Case, Subject

    path = str(model_path)
    label = Path(path).name
    model = adapter.load_model(path, device=device)
    ctx = CheckContext(adapter_name=adapter.name, model_label=label, model_path=path,
                       device=device, reference=reference)
    return Subject(Case(adapter.name, adapter.name, label, path), adapter, model, ctx,
                   state.capture(model))


def _expect(result: Result, expected: ExpectedFailures) -> Result:
    reason = expected.get((result.check, result.model), expected.get(result.check))
    if reason is None or result.outcome not in ("failed", "passed"):
        return result
    outcome = "xfailed" if result.outcome == "failed" else "xpassed"
    return Result(result.adapter, result.model, result.check, outcome, reason)


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
    ids = [f"{a.name}-{Path(m).name}-{c.__name__}" for a, m, c in params]
    return pytest.mark.parametrize(("adapter", "model", "check"), params, ids=ids)


def verify(adapter: Any, model: str | os.PathLike[str], check: Check, *,
           device: str = "cpu") -> None:
    """Run one check inside a pytest test; the model is loaded once per (adapter, model)."""
    from pytest_invarlock.testing import run_check

    key = (id(adapter), str(model))
    if key not in _SUBJECTS:
        _SUBJECTS[key] = _subject(adapter, model, device, reference=False)
    run_check(_SUBJECTS[key], check)


def _run(subject: Any, check: Check) -> Result:
    def result(outcome: str, reason: str = "") -> Result:
        return Result(subject.case.adapter, subject.case.model, check.__name__, outcome, reason)

    try:
        subject.call(check)
    except ClaimNote as exc:
        return result("passed", str(exc))
    except CheckFailed as exc:
        return result("failed", str(exc))
    except CheckNotApplicable as exc:
        return result("skipped", str(exc))
    except Exception as exc:
        return result("error", "".join(traceback.format_exception_only(exc)).strip())
    return result("passed")
