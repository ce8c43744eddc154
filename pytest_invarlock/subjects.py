"""Load subjects: one loader for the pytest path and the Python API, memoised per process.

A case's subject is loaded on first use, by the process (under xdist: the worker) that runs
the case's tests, and kept for the rest of the process; a failure is kept too, so one broken
checkpoint costs one load. Whether the implementation declines the loaded subject is decided
once, on the same process.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pytest_invarlock.errors import CallTimeout
from pytest_invarlock.lanes import Lane
from pytest_invarlock.profile import Case, Env, Profile, Subject
from pytest_invarlock.registry import AdapterError, AdapterSpec
from pytest_invarlock.verdicts import DEFAULT_POLICY, Policy, bounded

T = TypeVar("T")


def load_subject(profile: Profile[Any], case: Case, adapter: Any, env: Env,
                 policy: Policy = DEFAULT_POLICY) -> Subject[Any]:
    """Load ``case`` with ``adapter`` through its profile, bounded by the policy's load time."""
    subject = bounded(policy.load_timeout, lambda: profile.load(case, adapter, env))
    subject.policy = policy
    return subject


def _memo(cache: dict[Any, Any], key: Any, make: Callable[[], T],
          errors: tuple[type[BaseException], ...]) -> T:
    """Return ``cache[key]``, made once; a failure is cached too and raised on every call."""
    if key not in cache:
        try:
            cache[key] = make()
        except errors as exc:
            cache[key] = exc
    found = cache[key]
    if isinstance(found, BaseException):
        raise found
    return found  # type: ignore[no-any-return]


class Subjects:
    """Instantiate implementations and load (implementation, subject) pairs once per process."""

    def __init__(self, lane: Lane, policy: Policy = DEFAULT_POLICY) -> None:
        self.lane = lane
        self.policy = policy
        self._workdir: Path | None = None
        self._checked: dict[str, Any] = {}
        self._loaded: dict[tuple[str, str, str], Any] = {}
        self._declines: dict[tuple[str, str, str], str | None] = {}
        #: number of loads made by this process (what planning must never add to)
        self.loads = 0

    @property
    def workdir(self) -> Path:
        """Return the run's scratch directory (made on first use, removed by :meth:`close`)."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="invarlock-work-"))
        return self._workdir

    def close(self) -> None:
        """Remove the scratch directory: a run leaves nothing behind in the temp dir."""
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def _key(self, case: Case) -> tuple[str, str, str]:
        return (case.profile, case.selector, case.path or case.model)

    def load(self, profile: Profile[Any], spec: AdapterSpec, problem: str | None,
             case: Case) -> Subject[Any]:
        """Return the subject of ``case``, loading it on first use only."""
        return _memo(self._loaded, self._key(case),
                     lambda: self._load(profile, spec, problem, case), (Exception, CallTimeout))

    def _load(self, profile: Profile[Any], spec: AdapterSpec, problem: str | None,
              case: Case) -> Subject[Any]:
        # an unusable implementation raises its problem once per selector
        _memo(self._checked, case.selector, lambda: self._usable(spec, problem), (AdapterError,))
        # each (implementation, subject) gets its own instance, as frameworks create one per
        # model: an implementation keeping per-model state is not judged on a stale one
        adapter = spec.instantiate()
        env = Env(self.lane.device, self.workdir, reference=spec.origin == "builtin")
        self.loads += 1
        return load_subject(profile, case, adapter, env, self.policy)

    @staticmethod
    def _usable(spec: AdapterSpec, problem: str | None) -> bool:
        if problem:
            raise AdapterError(problem)
        spec.instantiate()
        return True

    def declined(self, profile: Profile[Any], subject: Subject[Any]) -> str | None:
        """Return why the implementation declines its loaded subject, decided once per process."""
        key = self._key(subject.case)
        if key not in self._declines:
            self._declines[key] = profile.decline(subject)
        return self._declines[key]
