"""Discover adapters: the ``invarlock.adapters`` entry points and ``module:Class`` selectors."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pytest_invarlock.protocol import CORE_MEMBERS, missing_members

GROUP = "invarlock.adapters"
BUILTIN_DIST = "pytest-invarlock"


class AdapterError(Exception):
    """An adapter cannot be used; the message names the adapter, its source and the fix."""


@dataclass(frozen=True)
class AdapterSpec:
    """Where an adapter comes from: a registered name or a ``module:Class`` path."""

    name: str
    target: str
    distribution: str | None = None
    version: str | None = None

    @property
    def origin(self) -> str:
        """Return ``builtin``, ``third_party`` (another distribution) or ``path`` (module:Class)."""
        if self.distribution is None:
            return "path"
        return "builtin" if self.distribution == BUILTIN_DIST else "third_party"

    def instantiate(self) -> Any:
        """Import the class, instantiate it with no arguments and check the protocol."""
        where = f"adapter {self.name!r} ({self.target}" + (
            f", from {self.distribution} {self.version})" if self.distribution else ")")
        module_name, _, attr = self.target.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise AdapterError(f"{where} cannot be imported: {exc!r}; check that the module is "
                               "installed or on PYTHONPATH and the class name is right") from exc
        try:
            adapter = cls()
        except Exception as exc:
            raise AdapterError(f"{where} cannot be instantiated with no arguments: {exc!r}; "
                               "give every constructor argument a default") from exc
        missing = missing_members(adapter, CORE_MEMBERS)
        if missing:
            raise AdapterError(f"{where} lacks {', '.join(missing)} of the ModelAdapter protocol "
                               f"({', '.join(CORE_MEMBERS)}); implement them")
        return adapter


@dataclass(frozen=True)
class Discovery:
    """Every registered adapter by name, and the registration problems found on the way."""

    adapters: dict[str, AdapterSpec]
    problems: dict[str, str]


def discover() -> Discovery:
    """Return the adapters registered under ``invarlock.adapters``, reporting name collisions."""
    found: dict[str, list[AdapterSpec]] = {}
    for ep in entry_points(group=GROUP):
        dist = ep.dist
        spec = AdapterSpec(ep.name, ep.value, dist.name if dist else "unknown",
                           dist.version if dist else None)
        if spec not in found.setdefault(ep.name, []):
            found[ep.name].append(spec)
    adapters, problems = {}, {}
    for name, specs in sorted(found.items()):
        specs.sort(key=lambda s: (s.distribution or "", s.target))
        if len({s.target for s in specs}) > 1:
            sources = ", ".join(f"{s.distribution} ({s.target})" for s in specs)
            problems[name] = (f"adapter name {name!r} is registered by several distributions: "
                              f"{sources}; uninstall one, or select the class with "
                              "--invarlock-adapter=module:Class")
        adapters[name] = specs[0]
    return Discovery(adapters, problems)


def resolve(selector: str, discovery: Discovery) -> AdapterSpec:
    """Return the adapter for ``selector``: a registered name or ``module:Class``."""
    if ":" in selector:
        return AdapterSpec(selector.rpartition(":")[2], selector)
    if selector in discovery.adapters:
        return discovery.adapters[selector]
    known = ", ".join(sorted(discovery.adapters)) or "none"
    raise AdapterError(f"--invarlock-adapter={selector}: no adapter of that name is registered "
                       f"under the {GROUP!r} entry-point group (registered: {known}); install "
                       "its package or pass module:Class")
