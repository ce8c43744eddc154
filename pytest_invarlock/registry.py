"""Discover implementations: entry points, qualified ``DIST:NAME`` selectors, ``module:Class`` paths.

What is discovered is a profile's: its :class:`Requirements` name the entry-point groups its
implementations register under (its own group first) and the members they must have. A name
claimed by one distribution keeps its plain name (``hf_causal``); a name claimed by several is
only selectable qualified by its distribution (``invarlock:hf_causal``,
``pytest-invarlock:hf_causal``), and the plain name is a usage error naming every choice.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import Any

BUILTIN_DIST = "pytest-invarlock"


@dataclass(frozen=True)
class Requirements:
    """What a profile's implementations are: where they register and what they must have."""

    #: the protocol's name, as messages spell it (``ModelAdapter``)
    protocol: str
    #: entry-point groups, the profile's own first
    groups: tuple[str, ...]
    #: members every instance must have
    members: tuple[str, ...]
    #: methods the class must have (the members that are methods, and what the run calls)
    methods: tuple[str, ...]
    #: why the methods beyond ``members`` are needed (appended to the error)
    methods_why: str = ""
    #: whether the core makes an instance with no arguments; False when an implementation is a
    #: class its profile instantiates per subject (TransformerLens adapters take the subject's
    #: config), and the core hands ``Profile.load`` the class
    construct: bool = True
    #: the profile's own lister of its implementations, used instead of reading ``groups``:
    #: for protocols whose own distribution keeps a table rather than entry points
    #: (TransformerLens's factory); it must load nothing heavy
    listing: Callable[[Requirements], list[AdapterSpec]] | None = field(default=None,
                                                                        compare=False)


class AdapterError(Exception):
    """An adapter cannot be used; the message names the adapter, its source and the fix."""


def normalize(distribution: str) -> str:
    """Return a distribution name as PEP 503 compares them (``pytest_invarlock`` -> ``pytest-invarlock``)."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


@dataclass(frozen=True)
class AdapterSpec:
    """Where an adapter comes from: a registered entry point or a ``module:Class`` path.

    ``label`` is what records, reports and the matrix call it: the selector as the user wrote
    it, canonicalised (a plain registered name, ``DIST:NAME``, or ``module:Class``).
    """

    name: str
    target: str
    distribution: str | None = None
    version: str | None = None
    group: str | None = None
    label: str = ""
    requirements: Requirements | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name if self.distribution else self.target)

    @property
    def origin(self) -> str:
        """Return ``builtin``, ``third_party`` (another distribution) or ``path`` (module:Class)."""
        if self.distribution is None:
            return "path"
        return "builtin" if normalize(self.distribution) == BUILTIN_DIST else "third_party"

    @property
    def qualified(self) -> str:
        """Return ``DIST:NAME`` for a registered adapter, the ``module:Class`` path otherwise."""
        return f"{normalize(self.distribution)}:{self.name}" if self.distribution else self.target

    def _where(self) -> str:
        source = f", from {self.distribution} {self.version}" if self.distribution else ""
        return f"adapter {self.label!r} ({self.target}{source})"

    def load_class(self) -> Any:
        """Import the object the target names (``module:Class`` or ``module:Outer.Inner``)."""
        module_name, _, qualname = self.target.partition(":")
        try:
            found: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError, ValueError, TypeError) as exc:
            raise AdapterError(f"{self._where()} cannot be imported: {exc!r}; check that the "
                               "module is installed or on PYTHONPATH and the class name is "
                               "right") from exc
        return found

    @property
    def needs(self) -> Requirements:
        """Return the requirements of the profile this implementation is checked against."""
        if self.requirements is None:
            raise AdapterError(f"{self._where()} belongs to no profile")
        return self.requirements

    def check_class(self) -> Any:
        """Return the class if it can be an implementation; else raise naming what is missing."""
        needs = self.needs
        cls = self.load_class()
        if not inspect.isclass(cls):
            kind = "a module" if inspect.ismodule(cls) else f"a {type(cls).__name__}"
            raise AdapterError(f"{self._where()} is {kind}, not a class: name a class that "
                               f"implements the {needs.protocol} protocol "
                               f"({', '.join(needs.members)})")
        missing = [m for m in needs.methods if not callable(getattr(cls, m, None))]
        if missing:
            raise AdapterError(f"{self._where()} is not a {needs.protocol}: the class lacks the "
                               f"method{'s' * (len(missing) > 1)} {', '.join(missing)} (the "
                               f"protocol: {', '.join(needs.members)}{needs.methods_why}); "
                               "implement them")
        return cls

    def instantiate(self) -> Any:
        """Import the class, instantiate it with no arguments and check the protocol.

        For a profile that instantiates per subject (``Requirements.construct`` False), the
        checked class itself.
        """
        if not self.needs.construct:
            return self.check_class()
        cls = self.load_class()
        try:
            adapter = cls()
        except Exception as exc:
            raise AdapterError(f"{self._where()} cannot be instantiated with no arguments: "
                               f"{exc!r}; give every constructor argument a default") from exc
        needs = self.needs
        missing = [m for m in needs.members if not hasattr(adapter, m)]
        if missing:
            raise AdapterError(f"{self._where()} lacks {', '.join(missing)} of the "
                               f"{needs.protocol} protocol ({', '.join(needs.members)}); "
                               "implement them")
        return adapter


def instance_label(adapter: Any) -> str:
    """Return what records call an adapter instance passed from Python.

    Its ``name`` when its own class (or the instance) sets one; ``module:Class`` when the name
    is inherited, so a subclass of a reference adapter is never reported under its parent's
    name.
    """
    cls = type(adapter)
    own = "name" in vars(adapter) if hasattr(adapter, "__dict__") else False
    if own or "name" in vars(cls):
        return str(adapter.name)
    return f"{cls.__module__}:{cls.__qualname__}"


@dataclass(frozen=True)
class Discovery:
    """Every registered adapter by label, each name's claimants, and registration problems."""

    adapters: dict[str, AdapterSpec]
    problems: dict[str, str]
    #: plain name -> every registration of it (several when distributions collide)
    claims: dict[str, tuple[AdapterSpec, ...]]
    requirements: Requirements | None = None


def _registrations(needs: Requirements) -> list[AdapterSpec]:
    """Return every entry point of the profile's groups, once per (distribution, name, target)."""
    found: list[AdapterSpec] = []
    for group in needs.groups:
        for ep in entry_points(group=group):
            dist = ep.dist
            spec = AdapterSpec(ep.name, ep.value, dist.name if dist else "unknown",
                               dist.version if dist else None, group, requirements=needs)
            if not any((s.qualified, s.target) == (spec.qualified, spec.target) for s in found):
                found.append(spec)
    return found


def discover(needs: Requirements | None = None) -> Discovery:
    """Return a profile's registered implementations (default: the built-in HF adapter profile's).

    A name claimed by several distributions is qualified.
    """
    if needs is None:
        from pytest_invarlock.profile import profiles

        needs = profiles()[0].requirements
    by_name: dict[str, list[AdapterSpec]] = {}
    for spec in needs.listing(needs) if needs.listing else _registrations(needs):
        by_name.setdefault(spec.name, []).append(spec)
    adapters: dict[str, AdapterSpec] = {}
    problems: dict[str, str] = {}
    claims: dict[str, tuple[AdapterSpec, ...]] = {}
    for name, specs in sorted(by_name.items()):
        specs.sort(key=lambda s: (s.qualified, s.group or "", s.target))
        claims[name] = tuple(specs)
        shared = len({s.qualified for s in specs}) > 1
        for spec in specs:
            label = spec.qualified if shared else name
            if label in adapters:  # one distribution, one name, two targets
                targets = ", ".join(s.target for s in specs if s.qualified == spec.qualified)
                problems[label] = (f"adapter name {name!r} is registered twice by "
                                   f"{spec.distribution} ({targets}); the distribution must "
                                   "register each name once")
                continue
            adapters[label] = replace(spec, label=label)
    return Discovery(adapters, problems, claims, needs)


def _importable(module: str) -> bool:
    """Return whether ``module``'s top-level package exists (found, never imported)."""
    import importlib.util

    top = module.partition(".")[0]
    try:
        return top.isidentifier() and importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def choices(specs: tuple[AdapterSpec, ...]) -> str:
    """Return the qualified selectors of several registrations, with where each comes from."""
    return " or ".join(f"--invarlock-adapter={s.qualified} ({s.distribution} {s.version}, "
                       f"{s.target})" for s in specs)


def resolve(selector: str, discovery: Discovery) -> AdapterSpec:
    """Return the adapter for ``selector``: a plain name, ``DIST:NAME`` or ``module:Class``."""
    if ":" in selector:
        dist, _, name = selector.partition(":")
        for spec in discovery.claims.get(name, ()):
            if spec.distribution and normalize(spec.distribution) == normalize(dist):
                # one label per registration, however it was spelled: plain unless shared
                return discovery.adapters.get(name if len(discovery.claims[name]) == 1
                                              else spec.qualified, spec)
        if not _importable(dist):  # then it cannot be module:Class: say what DIST registers
            registered = sorted(s.name for specs in discovery.claims.values() for s in specs
                                if s.distribution and normalize(s.distribution) == normalize(dist))
            close = difflib.get_close_matches(name, registered, n=2)
            hint = f" Did you mean {' or '.join(f'{dist}:{c}' for c in close)}?" if close else ""
            listed = ", ".join(registered) or "none"
            raise AdapterError(f"--invarlock-adapter={selector}: distribution {dist!r} registers "
                               f"no adapter {name!r} (it registers: {listed}; is it "
                               f"installed?).{hint}")
        return AdapterSpec(selector.rpartition(":")[2].rpartition(".")[2], selector,
                           requirements=discovery.requirements)
    if selector in discovery.adapters:
        return discovery.adapters[selector]
    claimed = discovery.claims.get(selector, ())
    if len(claimed) > 1:
        raise AdapterError(f"--invarlock-adapter={selector} is ambiguous: several distributions "
                           f"register {selector!r}; select one with {choices(claimed)}")
    known = sorted(discovery.adapters)
    close = difflib.get_close_matches(selector, known, n=3)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    groups = " or ".join(repr(g) for g in (discovery.requirements.groups
                                           if discovery.requirements else ()))
    raise AdapterError(f"--invarlock-adapter={selector}: no adapter of that name is registered "
                       f"under the {groups} entry-point groups (registered: "
                       f"{', '.join(known) or 'none'}).{hint} Install its package or pass "
                       "module:Class.")
