"""Pre-quantized tiny checkpoints: built offline from a catalog fixture, cached, deterministic.

A quantized adapter must be checked on what its users load: a checkpoint that already carries a
``quantization_config`` (transformers then loads it as it is, without quantizing again). Such
checkpoints are not shipped; each entry of the catalog's ``"quantized"`` object names a
full-precision fixture (``source``) and the backend settings, and a builder of its ``method``
quantizes that fixture and saves the result. Builds are cached beside the full-precision
fixtures (:func:`~pytest_invarlock.hf_adapter.fixtures.cache_root`), keyed by everything that
shapes their bytes: this module's builder version, the entry, the source fixture's own key, the
torch and transformers versions and the backend's distribution version.

A backend is optional: :func:`missing` says exactly which one is absent and how to install it,
and finds that out without importing it (importing bitsandbytes alone costs seconds).

    python -m pytest_invarlock.hf_adapter.quant_fixtures                       # all installed
    python -m pytest_invarlock.hf_adapter.quant_fixtures llama-gqa-kv2-bnb-nf4  # one
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pytest_invarlock.hf_adapter import fixtures
from pytest_invarlock.resources import load_json

#: bump when a builder changes what it writes (every cached quantized fixture is then rebuilt)
BUILDER_VERSION = "1"


@dataclass(frozen=True)
class QuantFixture:
    """One entry of the catalog's ``"quantized"`` object: a source fixture and how to quantize it."""

    name: str
    #: the full-precision catalog fixture that is quantized (family and role are its own)
    source: str
    #: ``quantization_config.quant_method`` as the checkpoint's config.json writes it
    method: str
    #: the module the backend's distribution provides
    backend: str
    #: the pytest-invarlock extra that installs the backend
    extra: str
    #: the builder's settings (for bitsandbytes: ``BitsAndBytesConfig`` keyword arguments)
    settings: dict[str, Any]

    @property
    def family(self) -> str:
        """Return the source fixture's family."""
        return fixtures.catalog()[self.source].family

    @property
    def role(self) -> str:
        """Return the source fixture's role."""
        return fixtures.catalog()[self.source].role


class BackendMissing(ImportError):
    """The backend a quantized fixture needs is not installed (the message says how to get it)."""


def quantized_catalog() -> dict[str, QuantFixture]:
    """Return the quantized fixtures of ``fixtures/catalog.json`` by name."""
    entries = load_json("fixtures", "catalog.json").get("quantized", {})
    return {name: QuantFixture(name=name, **entry) for name, entry in sorted(entries.items())}


def missing(q: QuantFixture) -> str | None:
    """Return why ``q`` cannot be built here (its backend is not importable), None if it can.

    ``find_spec`` locates the module without importing it.
    """
    try:
        found = importlib.util.find_spec(q.backend) is not None
    except (ImportError, ValueError):  # a dotted name whose parent package is absent
        found = False
    return None if found else f"needs {q.backend}: pip install 'pytest-invarlock[{q.extra}]'"


def backend_version(q: QuantFixture) -> str:
    """Return the installed version of the distribution that provides ``q.backend``."""
    top = q.backend.split(".")[0]
    try:
        return importlib.metadata.version(top)
    except importlib.metadata.PackageNotFoundError:  # a module named unlike its distribution
        names = importlib.metadata.packages_distributions().get(top, [])
        return ",".join(f"{n}=={importlib.metadata.version(n)}" for n in sorted(names)) or "?"


def cache_key(q: QuantFixture) -> str:
    """Return the key of ``q``'s build: everything that shapes the bytes it writes."""
    import torch
    import transformers

    ident = {"builder": BUILDER_VERSION, "entry": asdict(q),
             "source": fixtures.fixture_key(fixtures.catalog()[q.source]),
             "torch": torch.__version__, "transformers": transformers.__version__,
             "backend": backend_version(q)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def quant_fixture_path(name: str) -> Path:
    """Return the directory of quantized fixture ``name``, building it first if not cached.

    Raises :class:`BackendMissing` (with :func:`missing`'s reason) when its backend is absent.
    """
    q = quantized_catalog()[name]
    reason = missing(q)
    if reason is not None:
        raise BackendMissing(f"quantized fixture {name!r} {reason}")
    final = fixtures.cache_root() / f"{name}-{cache_key(q)}"
    if not (final / "config.json").is_file():
        source = fixtures.fixture_path(q.source)
        fixtures.build_atomically(final, lambda out: BUILDERS[q.method](q, source, out))
    return final


# --------------------------------------------------------------------------- builders

#: a builder writes the quantized checkpoint of an entry from its source fixture's directory
Builder = Callable[[QuantFixture, Path, Path], None]


def with_settings(build: Callable[[Path, Path, dict[str, Any]], None]) -> Builder:
    """Adapt a ``build(source, out, settings)`` function to a :data:`BUILDERS` entry."""
    def builder(q: QuantFixture, source: Path, out: Path) -> None:
        build(source, out, dict(q.settings))
    return builder


def build_bnb(source: Path, out: Path, settings: dict[str, Any]) -> None:
    """Quantize ``source`` with ``BitsAndBytesConfig(**settings)`` and save it, before any forward.

    The order matters (research, trap bnb-1): on the CPU the first 4-bit forward repacks the
    weights, and ``state_dict()`` (which ``save_pretrained`` calls) then unpacks them again with
    a re-quantized ``absmax``, so a checkpoint saved after a forward is lossy; re-saving a
    reloaded 4-bit model raises. Saved straight after quantizing, the bytes are those
    ``quantize_4bit`` (or LLM.int8()) computed, the same on every run.
    """
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(source), quantization_config=transformers.BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            **settings),
        device_map={"": "cpu"}, local_files_only=True)
    model.save_pretrained(str(out))


def _build_ct(source: Path, out: Path, settings: dict[str, Any]) -> None:
    """Build a compressed-tensors checkpoint (ct_build.py; imported only when one is built)."""
    from pytest_invarlock.hf_adapter.ct_build import build_ct

    build_ct(source, out, settings)


#: seconds a gptqmodel build may take (a tiny fixture takes 10-20 s on two cores)
BUILD_TIMEOUT = 600


def _build_gptq(source: Path, out: Path, settings: dict[str, Any]) -> None:
    """Build a GPTQ/AWQ checkpoint with gptqmodel in a fresh process (gptq_build.py says why)."""
    import os
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GPTQMODEL_CPU_WORKERS": "2"}
    done = subprocess.run([sys.executable, "-m", "pytest_invarlock.hf_adapter.gptq_build",
                           str(source), str(out), json.dumps(settings)], env=env,
                          capture_output=True, text=True, check=False, timeout=BUILD_TIMEOUT)
    if done.returncode or not (out / "config.json").is_file():
        raise RuntimeError(f"gptq_build of {source.name} into {out} failed (exit "
                           f"{done.returncode}):\n{done.stderr[-4000:]}")


#: builders by ``method``; another backend is one line: ``"<method>": with_settings(build_x)``
BUILDERS: dict[str, Builder] = {
    "bitsandbytes": with_settings(build_bnb),
    "compressed-tensors": with_settings(_build_ct),
    "gptq": with_settings(_build_gptq),
    "awq": with_settings(_build_gptq),
}


def main(argv: list[str]) -> int:
    """Build the named quantized fixtures (all installed by default), print ``name<TAB>path``.

    A fixture named explicitly whose backend is missing is an error (exit 1, the reason on
    stderr); building all skips those, saying so on stderr.
    """
    status = 0
    for name in argv or sorted(quantized_catalog()):
        reason = missing(quantized_catalog()[name])
        if reason is not None:
            print(f"{name}: {reason}", file=sys.stderr)
            status = 1 if argv else status
            continue
        print(f"{name}\t{quant_fixture_path(name)}")
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
