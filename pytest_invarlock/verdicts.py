"""Run one check on one subject and turn what happened into a verdict.

This is the one place where a check's exceptions become outcomes; the pytest path
(:mod:`pytest_invarlock.testing`) and the Python API (:mod:`pytest_invarlock.api`) both use it:

==========================  ==========================================================
what the check did          outcome
==========================  ==========================================================
returned                    ``passed`` (with ``note`` when it raised ``ClaimNote``)
CheckFailed, MUST level     ``failed``
CheckFailed, SHOULD level   ``finding`` (``failed`` under ``strict``)
CheckNotApplicable          ``skipped``
TruthUnavailable            ``unjudged``: the suite cannot judge this model (its gap,
                            never the adapter's failure)
CallTimeout                 ``error``, naming the adapter call that hung
any other exception         ``error``, naming the exception
==========================  ==========================================================
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from pytest_invarlock.checking import MUST, Check, level_of
from pytest_invarlock.errors import (
    CallTimeout,
    CheckFailed,
    CheckNotApplicable,
    ClaimNote,
    TruthUnavailable,
)

if TYPE_CHECKING:
    from pytest_invarlock.profile import Subject

#: Default bound, in seconds, on one check (or one model load) of one subject.
DEFAULT_TIMEOUT = 300.0
#: A model load gets at least this long: the first load in a process imports the model code.
MIN_LOAD_TIMEOUT = 60.0
UNJUDGED = "suite cannot judge this model"
T = TypeVar("T")


@dataclass(frozen=True)
class Policy:
    """How verdicts are reached: SHOULD findings as failures, and the time bound (0: none)."""

    strict: bool = False
    timeout: float = DEFAULT_TIMEOUT

    @property
    def load_timeout(self) -> float:
        """Return the bound on one model load (0: none)."""
        return max(self.timeout, MIN_LOAD_TIMEOUT) if self.timeout > 0 else 0.0


DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check on one subject, its level and the reason."""

    outcome: str
    level: str
    message: str = ""
    #: The exception behind an ``error`` (kept for tracebacks; never serialized).
    exception: BaseException | None = None


def judge(subject: Subject[Any], check: Check[Any], policy: Policy = DEFAULT_POLICY) -> Verdict:
    """Run ``check`` on ``subject`` (bounded by ``policy.timeout``) and return its verdict."""
    level = level_of(check)
    try:
        subject.call(check, policy.timeout)
    except ClaimNote as exc:
        return Verdict("passed", level, str(exc))
    except CheckFailed as exc:
        failed = "failed" if level == MUST or policy.strict else "finding"
        return Verdict(failed, level, str(exc))
    except CheckNotApplicable as exc:
        return Verdict("skipped", level, str(exc))
    except TruthUnavailable as exc:
        return Verdict("unjudged", level, f"{UNJUDGED}: {exc}")
    except CallTimeout as exc:  # a BaseException: no check's ``except Exception`` takes it
        return Verdict("error", level, str(exc), exc)
    except Exception as exc:
        text = "".join(traceback.format_exception_only(exc)).strip()
        return Verdict("error", level, f"{_where(exc)}raised {text}", exc)
    return Verdict("passed", level)


def _where(exc: BaseException) -> str:
    """Name the innermost adapter call in ``exc``'s traceback (``"X.describe() "``), if any."""
    frames = [f for f, _ in traceback.walk_tb(exc.__traceback__)]
    call = _adapter_call(frames)
    return f"{call}() " if call else ""


# --------------------------------------------------------------------------- time bound

_SUITE = os.path.dirname(os.path.abspath(__file__))
_ADAPTERS = os.path.join(_SUITE, "adapters")


def _is_suite(frame: FrameType) -> bool:
    """Return whether ``frame`` runs the suite's own code (the reference adapters are not)."""
    path = os.path.abspath(frame.f_code.co_filename)
    return path.startswith(_SUITE + os.sep) and not path.startswith(_ADAPTERS + os.sep)


#: The suite's code that calls implementations: the profiles (their checks and loaders) and
#: the core's subject loader.
_CALLERS = (os.path.join(_SUITE, "hf_adapter") + os.sep, os.path.join(_SUITE, "subjects.py"),
            os.path.join(_SUITE, "api.py"))


def _calls_adapters(frame: FrameType) -> bool:
    return os.path.abspath(frame.f_code.co_filename).startswith(_CALLERS)


def _adapter_call(frames: list[FrameType]) -> str | None:
    """Return the qualified name of the outermost call a check (or a loader) made into other code."""
    for i in range(1, len(frames)):
        if _calls_adapters(frames[i - 1]) and not _is_suite(frames[i]):
            code = frames[i].f_code
            return str(getattr(code, "co_qualname", code.co_name))
    return None


def _stack(frame: FrameType | None) -> list[FrameType]:
    """Return the frames from the outermost to ``frame``."""
    out = []
    while frame is not None:
        out.append(frame)
        frame = frame.f_back
    return out[::-1]


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`CallTimeout` naming the adapter call in progress after ``seconds``.

    Uses SIGALRM, so a hung call is interrupted in the thread that made it and no watcher
    thread can keep the run alive; off the main thread, or where SIGALRM does not exist, or
    with ``seconds <= 0``, the body runs unbounded.
    """
    usable = (seconds > 0 and hasattr(signal, "SIGALRM")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        call = _adapter_call(_stack(frame)) or "the check"
        raise CallTimeout(f"{call}() did not return within {seconds:g} s (--invarlock-timeout); "
                          "the call hangs or is far too slow for a tiny model")

    previous = signal.signal(signal.SIGALRM, expire)
    outer, interval = signal.getitimer(signal.ITIMER_REAL)
    if outer and outer <= seconds:  # an earlier timer (an outer deadline, pytest-timeout) is due first
        signal.signal(signal.SIGALRM, previous)
        yield
        return
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:  # put the earlier timer back with what is left of it (fire at once if due)
            left = outer - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), interval)


def bounded(seconds: float, make: Callable[[], T]) -> T:
    """Return ``make()`` run under :func:`deadline`."""
    with deadline(seconds):
        return make()
