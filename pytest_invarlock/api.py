"""Run checks from Python, without pytest: ``check_adapter`` in the manner of ``check_estimator``."""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable
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


def check_adapter(adapter: Any, model_path: str | os.PathLike[str], *,
                  checks: Iterable[Check] | None = None, device: str = "cpu",
                  reference: bool = False) -> list[Result]:
    """Load ``model_path`` with ``adapter`` once and run ``checks`` (default: all) on it."""
    from pytest_invarlock import state
    from pytest_invarlock.subjects import Case, Subject

    path = str(model_path)
    label = Path(path).name
    model = adapter.load_model(path, device=device)
    ctx = CheckContext(adapter_name=adapter.name, model_label=label, model_path=path,
                       device=device, reference=reference)
    subject = Subject(Case(adapter.name, adapter.name, label, path), adapter, model, ctx,
                      state.capture(model))
    return [_run(subject, check) for check in (all_checks() if checks is None else checks)]


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
