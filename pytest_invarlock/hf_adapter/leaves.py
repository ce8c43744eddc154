"""Every plain tensor a model's forward reads: the suite's deep view of a (quantized) model's state.

``named_parameters`` and ``named_buffers`` are the whole state of a full-precision model, not of a
quantized one (measured in ``research/quantized-backends-cpu.md``, traps X2 and X3):

- torchao and quanto weights are tensor *subclasses* whose values live in plain inner tensors
  named by ``__tensor_flatten__`` (torchao ``qdata``/``scale``/``zero_point``; quanto ``_data``,
  ``_scale``, ``_shift``, with ``_data`` itself a ``PackedTensor`` for 2/4-bit); their storage
  has no data pointer, so anything keyed by storage identity must look inside;
- bitsandbytes keeps int8 scales on the weight (``Int8Params.CB``/``SCB``) until the first
  forward moves them to ``module.state``, and 4-bit ``Params4bit.quant_state`` holds ``absmax``,
  ``code``, ``offset`` and a nested ``state2``;
- HQQ keeps ``meta['scale']``/``meta['zero']`` in a plain dict (``zero`` an inference tensor)
  and a linear's bias as a plain attribute;
- gptqmodel's forward reads unregistered caches (``scales_and_zeros``, ``ret_idx``).

A snapshot that misses one of these looks exact to a comparison that misses it too, so the
suite captures, perturbs and compares *leaves*: plain tensors, each under a stable name
(``<param>#<inner>`` for subclass insides, ``<module>.state.CB``, ``<param>.quant_state.absmax``,
``<module>.meta.scale``, ``<module>.scales_and_zeros``). For a full-precision model the leaves are
exactly its parameters and buffers. Values are written back in place (``copy_``), never by
rebinding ``.data``: bitsandbytes' ``state.CB`` shares the weight's storage, and a rebind would
leave the forward reading the old one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pytest_invarlock.hf_adapter.state import bits, writable

#: unregistered tensors gptqmodel's CPU kernels read in the forward
CACHE_ATTRIBUTES = ("scales_and_zeros", "ret_idx")
#: tensor fields of a bitsandbytes ``QuantState`` (``state2`` is a nested one)
QUANT_STATE_FIELDS = ("absmax", "code", "offset")
#: tensor fields of bitsandbytes' int8 weight and ``MatmulLtState``
INT8_FIELDS = ("CB", "SCB")


@dataclass(frozen=True)
class Leaf:
    """One plain tensor the forward may read, and what holds it."""

    tensor: torch.Tensor
    #: parameter, buffer, inner (a tensor subclass's), quant_state, meta, attribute (a plain
    #: tensor attribute: HQQ's bias) or cache
    kind: str


def is_plain(t: torch.Tensor) -> bool:
    """Return whether ``t`` is a plain tensor (its storage is its value), not a wrapper subclass."""
    return not hasattr(type(t), "__tensor_flatten__") or type(t) in (torch.Tensor, nn.Parameter)


def leaves(model: nn.Module) -> dict[str, Leaf]:
    """Return every plain tensor of ``model`` the forward may read, by name (tied names kept)."""
    found: dict[str, Leaf] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        found.update(_expand(name, p, "parameter"))
    for name, b in model.named_buffers(remove_duplicate=False):
        for key, leaf in _expand(name, b, "buffer").items():
            found.setdefault(key, leaf)
    for path, module in model.named_modules(remove_duplicate=False):
        prefix = f"{path}." if path else ""
        for key, leaf in _hidden(module, prefix):
            found.setdefault(key, leaf)
    return found


def _expand(name: str, t: torch.Tensor, kind: str) -> dict[str, Leaf]:
    """Return ``t`` itself when plain, else its inner tensors (recursively), plus weight fields."""
    out: dict[str, Leaf] = {}
    if is_plain(t):
        out[name] = Leaf(t, kind)
    else:
        inner_names, _ = t.__tensor_flatten__()  # type: ignore[attr-defined]
        for inner in inner_names:
            out.update(_expand(f"{name}#{inner}", getattr(t, inner), "inner"))
    if type(t).__name__ == "Int8Params":  # bitsandbytes int8, before the first forward
        out.update(_int8_fields(name, t, t))
    state = getattr(t, "quant_state", None)  # bitsandbytes Params4bit
    if state is not None and not isinstance(state, torch.Tensor):
        for key, value in _quant_state(state, f"{name}.quant_state"):
            out[key] = Leaf(value, "quant_state")
    return out


def _int8_fields(name: str, holder: Any, weight: torch.Tensor) -> dict[str, Leaf]:
    """Return bitsandbytes' int8 ``SCB`` (and ``CB`` unless it is the weight's own storage).

    The first forward moves them from the weight to ``module.state``; they keep one name
    (``<weight>.SCB``) wherever they are, so a snapshot taken before that forward still names
    the same leaves after it (research, trap X1).
    """
    out: dict[str, Leaf] = {}
    for field in INT8_FIELDS:
        value = getattr(holder, field, None)
        if not isinstance(value, torch.Tensor):
            continue
        if field == "CB" and value.numel() and weight.numel() and (
                value.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()):
            continue  # the int8 weight itself: the weight's leaf holds these bytes
        out[f"{name}.{field}"] = Leaf(value, "quant_state")
    return out


def _quant_state(state: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    for field in QUANT_STATE_FIELDS:
        value = getattr(state, field, None)
        if isinstance(value, torch.Tensor):
            yield f"{prefix}.{field}", value
    nested = getattr(state, "state2", None)
    if nested is not None:
        yield from _quant_state(nested, f"{prefix}.state2")


def _hidden(module: nn.Module, prefix: str) -> Iterator[tuple[str, Leaf]]:
    """Yield the tensors a module's forward reads that are neither parameters nor buffers."""
    state = vars(module).get("state")  # bitsandbytes MatmulLtState, after the first forward
    weight = getattr(module, "weight", None)
    if state is not None and type(state).__name__ == "MatmulLtState" and weight is not None:
        yield from _int8_fields(f"{prefix}weight", state, weight).items()
    meta = vars(module).get("meta")  # HQQLinear
    if isinstance(meta, dict):
        for key in sorted(meta):
            if isinstance(meta[key], torch.Tensor):
                yield f"{prefix}meta.{key}", Leaf(meta[key], "meta")
        bias = vars(module).get("bias")  # HQQLinear keeps its bias as a plain attribute
        if isinstance(bias, torch.Tensor):
            yield f"{prefix}bias", Leaf(bias, "attribute")
    for attribute in CACHE_ATTRIBUTES:  # gptqmodel
        value = vars(module).get(attribute)
        if isinstance(value, torch.Tensor):
            yield f"{prefix}{attribute}", Leaf(value, "cache")


def is_quantized(model: nn.Module) -> bool:
    """Return whether ``model`` has state beyond plain parameters and buffers."""
    return any(leaf.kind not in ("parameter", "buffer") for leaf in leaves(model).values())


# --------------------------------------------------------------------------- using the leaves


def capture(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copy every leaf of ``model`` to the CPU."""
    return {name: leaf.tensor.detach().to("cpu", copy=True)
            for name, leaf in leaves(model).items()}


def diff(model: nn.Module, captured: dict[str, torch.Tensor]) -> list[str]:
    """Describe every way the leaves of ``model`` differ from ``captured`` (empty: bit-identical)."""
    now = leaves(model)
    problems = [f"{n!r} is missing from the model" for n in sorted(set(captured) - set(now))]
    problems += [f"{n!r} is new in the model" for n in sorted(set(now) - set(captured))]
    for name in sorted(set(now) & set(captured)):
        t, saved = now[name].tensor, captured[name]
        if (t.dtype, tuple(t.shape)) != (saved.dtype, tuple(saved.shape)):
            problems.append(f"{name!r} is {t.dtype} {list(t.shape)}, expected {saved.dtype} "
                            f"{list(saved.shape)}")
        elif not torch.equal(bits(t), bits(saved)):
            problems.append(f"{name!r} differs from the original")
    return problems


def restore(model: nn.Module, captured: dict[str, torch.Tensor]) -> None:
    """Write ``captured`` back into the leaves of ``model`` in place, or raise and write nothing.

    The model must have the same leaves, each of the same dtype and shape.
    """
    now = {name: leaf.tensor for name, leaf in leaves(model).items()}
    wrong = misfits(now, captured)
    if wrong:
        raise ValueError(f"cannot restore {wrong[:3]}: no such leaf of that shape and dtype in "
                         "the model (or a leaf the capture lacks)")
    write_in_place(now, captured)


def misfits(now: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> list[str]:
    """Return the names whose value cannot be copied in place.

    A name in one dict only, or a value of another dtype or shape than its tensor.
    """
    wrong = sorted(set(now) ^ set(values))
    return wrong + [n for n in sorted(set(now) & set(values))
                    if (now[n].dtype, now[n].shape) != (values[n].dtype, values[n].shape)]


def write_in_place(now: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
    """Copy every value into its tensor (checked first with :func:`misfits`)."""
    for name, value in values.items():
        with writable(now[name]):
            now[name].copy_(value)
