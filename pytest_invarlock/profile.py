"""The profile seam: one profile per adapter protocol, behind one typed interface.

A :class:`Profile` is to this suite what a ``Scheduling`` is to pytest-xdist: the core (plugin
hooks, lanes, the subject cache, records, report, matrix, terminal output, the Python API)
drives it and knows nothing of what it verifies. A profile names where its implementations
register (entry-point groups) and what they must have, plans its cases *without loading
anything*, loads one subject per case (the core memoises it per process), yields the checks
that apply to an implementation, puts a subject back after a check that changes it, and names
its lanes, its lane ids and the packages that make its provenance.

Profiles are the built-in ones plus any registered under the ``invarlock.profiles``
entry-point group (``name = "module:attribute"``, the attribute a profile instance or a class
instantiable with no arguments).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

from pytest_invarlock.checking import Check, CheckContext, mutates
from pytest_invarlock.verdicts import DEFAULT_POLICY, Policy

if TYPE_CHECKING:
    from pytest_invarlock.lanes import Lane
    from pytest_invarlock.registry import Discovery, Requirements

M = TypeVar("M")

#: The entry-point group third parties register profiles under.
PROFILE_GROUP = "invarlock.profiles"
#: The built-in profiles, in the order they are planned and reported.
BUILTIN: tuple[str, ...] = ("pytest_invarlock.hf_adapter:PROFILE",
                           "pytest_invarlock.tl.profile:PROFILE")
#: The model label of a case that stands for every model (a skip or error said once).
ALL_MODELS = "all-models"
#: Where a case's checkpoint comes from.
SOURCES = ("fixture", "package", "path")


@dataclass(frozen=True)
class Case:
    """One implementation on one subject, as the tests are parametrized.

    ``labels`` are the subject's facts a report groups by (``family``, ``role``, a quant
    method...); ``source`` says where the checkpoint comes from (``fixture``, ``package`` or
    ``path``) and ``digest`` its content hash; ``skip`` / ``error`` make a case that cannot run
    (said once, by one test).
    """

    profile: str
    adapter: str
    selector: str
    model: str
    path: str | None
    labels: tuple[tuple[str, str], ...] = ()
    source: str | None = None
    digest: str | None = None
    skip: str | None = None
    error: str | None = None
    #: the user named this pair (implementation and subject): a failure to load it is an
    #: error; otherwise it is the implementation declining a subject it was not asked about
    explicit: bool = False
    #: the profile's estimate of what the case costs to run, in any unit (e.g. the bytes of
    #: its checkpoint): under xdist the costliest cases start first, so that no long case runs
    #: alone at the end while the other workers are idle
    cost: float = 0.0

    @property
    def id(self) -> str:
        """Return the test-id fragment ``implementation-model``."""
        return f"{self.adapter}-{self.model}"

    def label(self, key: str) -> str | None:
        """Return one subject label (None when the case has none of that name)."""
        return dict(self.labels).get(key)

    @property
    def family(self) -> str | None:
        """Return the ``family`` label (the model family, for HF models)."""
        return self.label("family")

    @property
    def role(self) -> str | None:
        """Return the ``role`` label."""
        return self.label("role")


def labels(**values: str | None) -> tuple[tuple[str, str], ...]:
    """Return subject labels as a case holds them: sorted, without the unknown ones."""
    return tuple(sorted((k, v) for k, v in values.items() if v is not None))


@dataclass(frozen=True)
class Declined:
    """A subject an implementation does not take, and why (one line)."""

    model: str
    labels: tuple[tuple[str, str], ...]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """Return the entry as the results file spells it."""
        found = dict(self.labels)
        return {"model": self.model, "family": found.get("family"), "role": found.get("role"),
                "reason": self.reason}


@dataclass(frozen=True)
class PlanRequest:
    """What a profile plans from: the lane, the selections and the implementations found."""

    lane: Lane
    #: ``--invarlock-adapter`` selectors of this profile (empty: every discovered one)
    selectors: tuple[str, ...]
    #: ``--invarlock-model`` values (empty: the profile's bundled subjects)
    models: tuple[str, ...]
    discovery: Discovery


@dataclass
class Plan:
    """The cases of one profile, and what each implementation did not take (decided statically)."""

    cases: list[Case] = field(default_factory=list)
    #: implementation label -> subjects it does not take, with the reason
    declined: dict[str, list[Declined]] = field(default_factory=dict)
    #: implementation label -> the selector it was planned from
    selectors: dict[str, str] = field(default_factory=dict)


@dataclass
class Subject(Generic[M]):
    """A loaded subject: the implementation, what it loaded, and what puts it back."""

    case: Case
    adapter: Any
    model: M
    ctx: CheckContext
    profile: Profile[M]
    #: what the profile keeps to put the subject back (a copy of its state)
    saved: Any = field(default=None, repr=False)
    policy: Policy = DEFAULT_POLICY

    def call(self, check: Check[M], timeout: float = 0) -> None:
        """Run ``check`` within ``timeout`` seconds; put the subject back if the check changes it.

        Only the check is bounded: putting the shared subject back is never interrupted.
        """
        from pytest_invarlock.verdicts import deadline

        try:
            with deadline(timeout):
                check(self.adapter, self.model, self.ctx)
        finally:
            if mutates(check):
                self.profile.put_back(self)


@dataclass(frozen=True)
class Env:
    """Where a subject is loaded: the lane's device, the run's scratch directory, the policy."""

    device: str
    workdir: Path
    reference: bool = False


@runtime_checkable
class Profile(Protocol[M]):
    """One adapter protocol: its implementations, subjects, checks, lanes and provenance."""

    #: the profile's name, as records and ``--invarlock-profile`` spell it
    name: str
    @property
    def requirements(self) -> Requirements:
        """Return how implementations register, and what they must have."""
    @property
    def packages(self) -> tuple[str, ...]:
        """Return the distributions whose versions make a run's provenance (beside pytest's)."""
    #: ids of the lanes (``pytest_invarlock.lanes.LANES``) this profile runs in
    lanes: tuple[str, ...]

    def checks(self) -> Sequence[Check[M]]:
        """Return every check of the profile, in the order they run and are reported."""

    def yield_checks(self, case: Case, checks: Sequence[Check[M]]) -> Iterable[Check[M]]:
        """Yield those of ``checks`` that apply to the case's implementation."""

    def plan(self, request: PlanRequest) -> Plan:
        """Return the cases of a run without loading any model (config files, catalogs only)."""

    def load(self, case: Case, adapter: Any, env: Env) -> Subject[M]:
        """Load the case's subject with ``adapter`` (a fresh instance); may raise."""

    def decline(self, subject: Subject[M]) -> str | None:
        """Return why the implementation does not take the loaded subject (None: it does)."""

    def put_back(self, subject: Subject[M]) -> None:
        """Restore the subject after a check that changes it (state, modules, hooks, modes)."""

    def load_error(self, case: Case, exc: BaseException) -> str:
        """Return one line saying why the case did not load (the file at fault when one is)."""

    def lane_id(self, case: Case, lane: str) -> str:
        """Return the support-matrix lane the case's records count towards in ``lane``."""


def _instance(target: str) -> Profile[Any]:
    module, _, attr = target.partition(":")
    found: Any = importlib.import_module(module)
    for part in attr.split("."):
        found = getattr(found, part)
    return found() if isinstance(found, type) else found  # type: ignore[no-any-return]


@cache
def profiles() -> tuple[Profile[Any], ...]:
    """Return the built-in profiles, then the registered ones (a name is taken once)."""
    found: dict[str, Profile[Any]] = {}
    targets = [*BUILTIN, *(ep.value for ep in entry_points(group=PROFILE_GROUP))]
    for target in targets:
        profile = _instance(target)
        found.setdefault(profile.name, profile)
    return tuple(found.values())


def by_name(name: str) -> Profile[Any]:
    """Return the profile called ``name`` (raises KeyError naming the known ones)."""
    for profile in profiles():
        if profile.name == name:
            return profile
    raise KeyError(f"no profile {name!r} (known: {', '.join(p.name for p in profiles())})")


def all_checks() -> list[Check[Any]]:
    """Return every profile's checks, in profile order then each profile's own order."""
    found: dict[str, Check[Any]] = {}
    for profile in profiles():
        for c in profile.checks():
            found.setdefault(c.__name__, c)
    return list(found.values())


def owner(checks: Sequence[Check[Any]], extra: Sequence[Profile[Any]] = ()) -> Profile[Any]:
    """Return the profile whose checks include every one of ``checks``."""
    names = {c.__name__ for c in checks}
    for profile in (*extra, *profiles()):
        if names <= {c.__name__ for c in profile.checks()}:
            return profile
    raise LookupError(f"no profile owns the checks {sorted(names)}: mark a test with the "
                      "checks of one profile (its CHECKS lists)")


def as_mapping(case: Case) -> Mapping[str, Any]:
    """Return the evidence facts of a case that every record of it carries."""
    return {"profile": case.profile, "labels": dict(case.labels), "source": case.source,
            "digest": case.digest}
