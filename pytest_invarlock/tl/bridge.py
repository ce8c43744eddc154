"""Everything that touches TransformerLens at run time, and the truth read from the real model.

The bridge is built the way TransformerLens builds one offline: HF config -> bridge config
(``build_bridge_config_from_hf``) -> the adapter factory -> ``build_bridge_from_module``. To
verify an adapter class that the factory does not hold (a subclass under test), the factory
maps the architecture to it for the duration of the build, then is put back.

Building a bridge rewires the HF model it wraps (its submodules become bridge components), so
every bridge here is built over a deep copy of the subject, and the subject itself stays the
untouched truth.
"""

from __future__ import annotations

import copy
import json
import os
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: what bridging adds to module paths (``model.layers.0._original_component.self_attn``)
WRAPPED = "._original_component"
#: fp32 logits of a bridge and of the HF model agree to this (relative and absolute): TL's
#: joint-QKV and attention bridges split or fuse matmuls, which reorders fp32 sums; with logits
#: of order 1 and 64-wide reductions that rounding is ~1e-6 (measured at most 2e-6 over every
#: architecture), while a wrong mapping moves logits by 1e-2 or more
RTOL = 1e-5
ATOL = 1e-5
#: the forward input a bridge takes positionally: tokens, else pixels, else audio
MAIN_INPUTS = ("input_ids", "pixel_values", "input_values")


def sources() -> Any:
    """Return ``transformer_lens.model_bridge.sources`` (imported once: it takes seconds)."""
    import transformer_lens.model_bridge.sources as found

    return found


def factory() -> Any:
    """Return TransformerLens's adapter factory, its entry points already discovered."""
    from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory

    ArchitectureAdapterFactory.discover_entry_points()
    return ArchitectureAdapterFactory


def hf_class(architecture: str) -> type | None:
    """Return the HF model class TransformerLens loads for ``architecture`` (None: it names none).

    Usually the transformers class of that name; not always (TransformerLens loads a headless
    ``BloomModel`` checkpoint as ``BloomForCausalLM``).
    """
    from transformer_lens.model_bridge.sources.transformers.helpers import (
        get_hf_model_class_for_architecture,
    )

    try:
        found = get_hf_model_class_for_architecture(architecture)
    except Exception:
        return None
    return found if isinstance(found, type) else None


def bridge_config(hf_config: Any, architecture: str) -> Any:
    """Return the TransformerBridgeConfig TransformerLens derives from ``hf_config``."""
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_config_from_hf

    return build_bridge_config_from_hf(hf_config, architecture, "external", torch.float32)


def new_adapter(cls: type, model: nn.Module, architecture: str) -> Any:
    """Return an instance of adapter class ``cls`` for ``model``, as a bridge build leaves it.

    The factory makes it from the config; ``prepare_model`` then sees the model (some adapters
    complete their mapping there, e.g. prefixing ``vit.`` on a classification head model). It
    is given a copy: it may patch the model it is given.
    """
    adapter = cls(bridge_config(model.config, architecture))
    adapter.cfg.device = "cpu"
    adapter.prepare_model(copy.deepcopy(model))
    return adapter


@contextmanager
def registered(architecture: str, cls: type) -> Iterator[None]:
    """Make the factory select ``cls`` for ``architecture`` within the block, then put it back."""
    table: dict[str, type] = factory()._adapters
    had = architecture in table
    old = table.get(architecture)
    table[architecture] = cls
    try:
        yield
    finally:
        if had:
            table[architecture] = old  # type: ignore[assignment]
        else:
            del table[architecture]


def build(subject: nn.Module, cls: type, architecture: str) -> tuple[Any, nn.Module]:
    """Return (a bridge built with ``cls`` over a copy of ``subject``, that copy)."""
    wrapped = copy.deepcopy(subject)
    with registered(architecture, cls):
        bridge = sources().build_bridge_from_module(wrapped, architecture,
                                                    hf_config=wrapped.config)
    return bridge, wrapped


# --------------------------------------------------------------------------- forward passes


def hf_output(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Return the HF model's logits (its first output when it has no logits)."""
    with torch.no_grad():
        out = model(**inputs)
    found = getattr(out, "logits", None)
    return found if isinstance(found, torch.Tensor) else out[0]


def bridge_output(bridge: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Return the bridge's logits for the same inputs (TransformerLens's default return type)."""
    main = next(k for k in MAIN_INPUTS if k in inputs)
    rest = {k: v for k, v in inputs.items() if k != main}
    with torch.no_grad():
        out = bridge(inputs[main], **rest)  # the bridge takes its main input positionally
    found = getattr(out, "logits", out)
    return found if isinstance(found, torch.Tensor) else out[0]


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Return whether two fp32 outputs agree within RTOL/ATOL (shapes must match)."""
    return got.shape == want.shape and torch.allclose(got.float(), want.float(), rtol=RTOL,
                                                      atol=ATOL)


def gap(got: torch.Tensor, want: torch.Tensor) -> str:
    """Return how two outputs differ, in words."""
    if got.shape != want.shape:
        return f"shape {tuple(got.shape)} against {tuple(want.shape)}"
    return f"largest difference {float((got.float() - want.float()).abs().max()):.3g}"


# --------------------------------------------------------------------------- the mapping


@dataclass(frozen=True)
class Component:
    """One component of an adapter's mapping, at one block index when in a block list."""

    #: the TransformerLens path (``blocks.1.attn.q``)
    tl_path: str
    #: the HF path the mapping declares: the component names joined down the mapping, with the
    #: block index (None for a synthetic component, which has no HF module)
    hf_path: str | None
    bridge: Any
    #: the mapping marks it optional (absent in some layers of hybrid architectures)
    optional: bool


def resolve(model: nn.Module, path: str) -> Any:
    """Return what ``path`` names on the real model: a module or a tensor (raises if none)."""
    found: Any = model
    for part in path.split("."):
        found = found[int(part)] if part.isdigit() else getattr(found, part)
    return found


def _join(parent: str | None, name: str | None) -> str | None:
    if name is None:
        return parent
    return f"{parent}.{name}" if parent else name


def derived(parent: Any, key: str, sub: Any) -> bool:
    """Return whether ``sub`` is a view the parent bridge makes itself, not a declared module.

    Splitting bridges (joint QKV, joint gate/up) add ``q``/``k``/``v`` (or ``gate``/``in``)
    submodules of their own, named after their key, that stand for slices of the fused
    weight: they have no HF module by design, and their computation is judged by the bridge
    checks (live weights), not by path resolution.
    """
    splits = any(callable(getattr(parent, a, None)) for a in dir(parent)
                 if a.startswith("split_"))
    return splits and getattr(sub, "name", None) == key


def _expand(tl_path: str, hf_path: str | None, bridge: Any, optional: bool,
            model: nn.Module) -> Iterator[Component]:
    """Yield a list component's items (read from the real model), else the component's children."""
    if getattr(bridge, "is_list_item", False) and hf_path is not None:
        try:
            count = len(resolve(model, hf_path))
        except (AttributeError, IndexError, TypeError, ValueError):
            return  # the list itself is judged by its own entry
        for index in range(count):
            path = f"{tl_path}.{index}"
            yield Component(path, f"{hf_path}.{index}", bridge, optional)
            yield from _children(path, f"{hf_path}.{index}", bridge, optional, model)
    else:
        yield from _children(tl_path, hf_path, bridge, optional, model)


def _children(tl_path: str, hf_path: str | None, bridge: Any, optional: bool,
              model: nn.Module) -> Iterator[Component]:
    subs = getattr(bridge, "submodules", None) or {}
    for tl_name, sub in subs.items():
        if derived(bridge, tl_name, sub):
            continue
        name = getattr(sub, "name", None)
        child_hf = _join(hf_path, name)
        child_optional = optional or bool(getattr(sub, "optional", False))
        path = f"{tl_path}.{tl_name}"
        yield Component(path, None if name is None else child_hf, sub, child_optional)
        yield from _expand(path, child_hf, sub, child_optional, model)


def components(adapter: Any, model: nn.Module) -> list[Component]:
    """Return every component of the mapping: each item of each list, nested ones too.

    The number of items of a list is read from the real model (the length of the list module
    the mapping names), so a list that does not resolve contributes only itself.
    """
    found: list[Component] = []
    mapping = adapter.get_component_mapping() or {}
    for tl_name, bridge in mapping.items():
        name = getattr(bridge, "name", None)
        optional = bool(getattr(bridge, "optional", False))
        found.append(Component(tl_name, name, bridge, optional))
        found += _expand(tl_name, name, bridge, optional, model)
    return found


def owner(components_: list[Component], key: str) -> Component | None:
    """Return the deepest mapped component whose HF path is a prefix of ``key``."""
    best: Component | None = None
    for c in components_:
        if c.hf_path is not None and key.startswith(c.hf_path + ".") and (
                best is None or len(c.hf_path) > len(best.hf_path or "")):
            best = c
    return best


# --------------------------------------------------------------------------- HF state


def unwrapped(name: str) -> str:
    """Return an HF name as it was before bridging (the bridge's wrappers removed)."""
    return name.replace(WRAPPED, "")


def tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return every parameter and buffer by its pre-bridge name (first alias wins)."""
    found: dict[str, torch.Tensor] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False),
                    *model.named_buffers(remove_duplicate=False)]:
        found.setdefault(unwrapped(name), t)
    return found


def noise(name: str, like: torch.Tensor, scale: float = 0.5) -> torch.Tensor:
    """Return a seeded perturbation for the tensor called ``name`` (stable across runs)."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()) ^ 0x5EED)
    return torch.randn(like.shape, generator=generator, dtype=torch.float32).to(like.dtype) * scale


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: nn.Module, directory: Path) -> Path:
    """Save ``model`` as transformers does by default (safetensors) with a word-level tokenizer.

    TransformerLens's boot loads a tokenizer from the checkpoint directory; the tiny models have
    none, so one is written whose vocabulary is the model's.
    """
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    hf: Any = model
    hf.save_pretrained(partial)
    size = int(getattr(hf.config.get_text_config(), "vocab_size", 128) or 128)
    vocab = {"<unk>": 0, **{f"t{i}": i for i in range(1, size)}}  # one token per id
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast: Any = PreTrainedTokenizerFast
    fast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="t1", eos_token="t2",
         pad_token="t3").save_pretrained(partial)
    partial.rename(directory)  # complete, or absent: an interrupted save is never reused
    return directory


def without_architectures(directory: Path, into: Path) -> Path:
    """Copy a checkpoint directory with ``architectures`` removed from its config.json."""
    import shutil

    if into.exists():
        shutil.rmtree(into)
    shutil.copytree(directory, into)
    config = json.loads((into / "config.json").read_text(encoding="utf-8"))
    config.pop("architectures", None)
    (into / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True),
                                      encoding="utf-8")
    return into


def detected_head(directory: Path, model: nn.Module) -> str | None:
    """Return the architecture TransformerLens detects for a checkpoint's config.

    Only when it is a head of the model's own config class; None when detection fails or
    names another config class (those are judged by booting).
    """
    import transformers
    from transformer_lens.model_bridge.sources._hf_format import (
        determine_architecture_from_hf_config,
    )
    from transformers import AutoConfig

    try:
        detect: Any = determine_architecture_from_hf_config  # untyped in transformer-lens
        found = str(detect(AutoConfig.from_pretrained(directory)))
        named: Any = getattr(transformers, found, None)
    except Exception:
        return None
    same = named is not None and getattr(named, "config_class", None) is type(
        getattr(model, "config", None))
    return found if same else None


@contextmanager
def no_installs() -> Iterator[None]:
    """Keep TransformerLens from installing packages while it boots.

    TransformerLens 4.3's ``boot_transformers`` pip-installs torchvision, unpinned, when it
    loads the processor of a vision or multimodal checkpoint and torchvision is missing
    (``sources/transformers/helpers.py``, ``_ensure_torchvision``): on a CPU venv that replaces
    the pinned torch. The suite never changes the environment it runs in: within the block
    that function only reports whether torchvision imports, and pip and uv see no index.
    """
    import importlib.util

    from transformer_lens.model_bridge.sources.transformers import helpers

    original = getattr(helpers, "_ensure_torchvision", None)
    offline = {"PIP_NO_INDEX": "1", "UV_OFFLINE": "1"}
    saved = {k: os.environ.get(k) for k in offline}
    os.environ.update(offline)
    if original is not None:
        helpers._ensure_torchvision = lambda: importlib.util.find_spec("torchvision") is not None
    try:
        yield
    finally:
        if original is not None:
            helpers._ensure_torchvision = original
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def boot(directory: Path, cls: type, architecture: str) -> Any:
    """Return ``TransformerBridge.boot_transformers(directory)`` with ``cls`` as the adapter.

    ``cls`` is registered for ``architecture`` and for the architecture the saved config names
    (``save_pretrained`` writes the class it saved: a ``BloomModel`` subject is a
    ``BloomForCausalLM``), so the class under test is what boots.
    """
    from transformer_lens.model_bridge import TransformerBridge

    sources()
    saved = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    names = {architecture, *(saved.get("architectures") or [])}
    with ExitStack() as stack:
        for name in sorted(names):
            stack.enter_context(registered(name, cls))
        stack.enter_context(no_installs())
        bridge = TransformerBridge.boot_transformers(str(directory), device="cpu")
    bridge.eval()
    return bridge
