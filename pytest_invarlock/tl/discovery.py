"""List TransformerLens architecture adapters without importing TransformerLens.

TransformerLens registers its own adapters in a table, ``SUPPORTED_ARCHITECTURES`` (HF
architecture name -> adapter class) in ``transformer_lens/factories/architecture_adapter_factory.py``,
and third parties under the ``transformer_lens.architectures`` entry-point group (name = HF
architecture, value = ``module:AdapterClass``). Importing that module imports torch, transformers
and every adapter (seconds), so planning reads the table as source: a dictionary literal whose
values are names imported at the top of the file. Should a release change that shape, the table
is read by importing the module instead; either way a new release is listed without code changes.

An implementation is an adapter *class* (labelled by its class name); its subjects are the
architectures it is registered for.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_invarlock.registry import AdapterSpec, Requirements

#: TransformerLens's distribution, and its third parties' entry-point group
DISTRIBUTION = "transformer-lens"
GROUP = "transformer_lens.architectures"
FACTORY_MODULE = "transformer_lens.factories.architecture_adapter_factory"
TABLE = "SUPPORTED_ARCHITECTURES"


@dataclass(frozen=True)
class Registration:
    """One architecture name registered to one adapter class."""

    architecture: str
    #: ``module:Class``
    target: str
    distribution: str
    version: str | None

    @property
    def class_name(self) -> str:
        """Return the adapter's class name (the implementation's label)."""
        return self.target.rpartition(":")[2]


def installed_version() -> str | None:
    """Return transformer-lens's installed version (None: not installed)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return None


def _factory_source() -> Path | None:
    """Return the factory module's file, found without importing any of transformer_lens."""
    spec = importlib.util.find_spec("transformer_lens")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), "factories",
                "architecture_adapter_factory.py")
    return path if path.is_file() else None


def parse_table(source: str) -> dict[str, str]:
    """Return architecture -> ``module:Class`` from the factory's source ({} if its shape changed).

    The table's values must be names imported with ``from MODULE import NAME``; anything else
    (a call, an attribute, a name defined locally) makes the whole parse give up rather than
    guess.
    """
    tree = ast.parse(source)
    imported: dict[str, str] = {}
    table: ast.Dict | None = None
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{node.module}:{alias.name}"
        value: ast.expr | None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == TABLE for t in targets):
            table = value if isinstance(value, ast.Dict) else None
    if table is None:
        return {}
    found: dict[str, str] = {}
    for key, value in zip(table.keys, table.values, strict=True):
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str)
                and isinstance(value, ast.Name) and value.id in imported):
            return {}
        found[key.value] = imported[value.id]
    return found


def _imported_table() -> dict[str, str]:
    """Return the table by importing the factory module (the fallback: slow, but always right)."""
    import importlib

    module = importlib.import_module(FACTORY_MODULE)
    table = getattr(module, TABLE)
    return {arch: f"{cls.__module__}:{cls.__qualname__}" for arch, cls in table.items()}


@cache
def registrations() -> tuple[Registration, ...]:
    """Return every (architecture, adapter) registration: TransformerLens's own, then third parties'.

    An entry point naming an architecture TransformerLens already has is kept: TransformerLens
    itself ignores it (with a warning), but it is still an adapter someone ships, so it is
    verified on that architecture.
    """
    found: list[Registration] = []
    tl_version = installed_version()
    source = _factory_source()
    if source is not None:
        table = parse_table(source.read_text(encoding="utf-8")) or _imported_table()
        found += [Registration(arch, target, DISTRIBUTION, tl_version)
                  for arch, target in table.items()]
    for ep in entry_points(group=GROUP):
        dist = ep.dist
        found.append(Registration(ep.name, ep.value, dist.name if dist else "unknown",
                                  dist.version if dist else None))
    return tuple(found)


def registered_target(architecture: str) -> str | None:
    """Return the adapter TransformerLens's own table gives ``architecture`` (None: not there)."""
    for r in registrations():
        if r.architecture == architecture and r.distribution == DISTRIBUTION:
            return r.target
    return None


def listing(needs: Requirements) -> list[AdapterSpec]:
    """Return one spec per adapter class: the registry's view (``Requirements.listing``)."""
    from pytest_invarlock.registry import AdapterSpec

    specs: dict[tuple[str, str], AdapterSpec] = {}
    for r in registrations():
        key = (r.distribution, r.target)
        if key not in specs:
            specs[key] = AdapterSpec(r.class_name, r.target, r.distribution, r.version, GROUP,
                                     requirements=needs)
    return list(specs.values())
