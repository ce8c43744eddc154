"""The suite's own view of a model's state: capture, bit-exact comparison, perturbation, reset.

Nothing here calls an adapter: this is what adapter snapshots are checked against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast
from weakref import WeakKeyDictionary

import torch
from torch import nn


@dataclass(frozen=True)
class Saved:
    """A copy of one named tensor as it was, with where it lived."""

    value: torch.Tensor
    device: torch.device
    is_parameter: bool
    requires_grad: bool


@dataclass(frozen=True)
class State:
    """Every parameter and buffer of a model, copied, plus which names share storage."""

    tensors: dict[str, Saved]
    groups: tuple[tuple[str, ...], ...]


_DEEP: WeakKeyDictionary[nn.Module, bool] = WeakKeyDictionary()


def deep(model: nn.Module) -> bool:
    """Return whether ``model`` holds state beyond plain parameters and buffers (quantized).

    Decided once per model object (a backend's kind of state does not change while it lives),
    or set by :func:`mark_deep` for a model an adapter says is quantized: some backends grow
    their hidden state only on the first forward (gptqmodel's caches).
    """
    try:
        found = _DEEP.get(model)
    except TypeError:  # a model class with __eq__ and no __hash__: decide every time
        from pytest_invarlock.hf_adapter import leaves

        return leaves.is_quantized(model)
    if found is None:
        from pytest_invarlock.hf_adapter import leaves

        found = _DEEP[model] = leaves.is_quantized(model)
    return found


def mark_deep(model: nn.Module) -> None:
    """Treat ``model`` as quantized from now on (its adapter says it is)."""
    try:
        _DEEP[model] = True
    except TypeError:
        pass


def named_tensors(model: nn.Module) -> dict[str, tuple[torch.Tensor, bool]]:
    """Return every parameter and buffer by name (tied names included) with an is-parameter flag.

    For a quantized model: every leaf its forward reads (see leaves.py), parameters flagged.
    """
    if deep(model):
        from pytest_invarlock.hf_adapter import leaves

        return {n: (leaf.tensor, leaf.kind == "parameter")
                for n, leaf in leaves.leaves(model).items()}
    return registered(model)


def registered(model: nn.Module) -> dict[str, tuple[torch.Tensor, bool]]:
    """Return the parameters and buffers modules register (tied names included), flagged."""
    out: dict[str, tuple[torch.Tensor, bool]] = {
        n: (p, True) for n, p in model.named_parameters(remove_duplicate=False)
    }
    for name, buf in model.named_buffers(remove_duplicate=False):
        out.setdefault(name, (buf, False))
    return out


def storage_key(t: torch.Tensor) -> tuple[object, ...]:
    """Return what identifies the memory a tensor views (same key = same values, always)."""
    if t.numel() == 0:
        return ("empty", id(t))
    if t.device.type == "meta":  # no memory: only the object (a tied parameter is one object)
        return ("meta", id(t))
    return (str(t.device), t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
            t.stride(), t.dtype)


def storage_groups(model: nn.Module) -> tuple[tuple[str, ...], ...]:
    """Return the groups of two or more tensor names that share one storage, sorted."""
    by_key: dict[tuple[object, ...], list[str]] = {}
    for name, (t, _) in named_tensors(model).items():
        by_key.setdefault(storage_key(t), []).append(name)
    return tuple(sorted(tuple(names) for names in by_key.values() if len(names) > 1))


def capture(model: nn.Module) -> State:
    """Copy every parameter and buffer of ``model`` to the CPU."""
    saved = {
        name: Saved(t.detach().to("cpu", copy=True), t.device, is_param, t.requires_grad)
        for name, (t, is_param) in named_tensors(model).items()
    }
    return State(saved, storage_groups(model))


def bits(t: torch.Tensor) -> torch.Tensor:
    """Return a tensor's raw bytes (bit-exact comparison: -0.0 differs from 0.0, NaN equals NaN)."""
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)


def diff(model: nn.Module, state: State) -> list[str]:
    """Describe every way ``model`` differs from ``state`` (empty when bit-identical)."""
    now = named_tensors(model)
    problems = [f"{n!r} is missing from the model" for n in sorted(set(state.tensors) - set(now))]
    problems += [f"{n!r} is new in the model" for n in sorted(set(now) - set(state.tensors))]
    for name in sorted(set(now) & set(state.tensors)):
        problems += _tensor_diff(name, now[name][0], state.tensors[name])
    groups = storage_groups(model)
    if groups != state.groups:
        problems.append(f"tied groups are {list(groups)}, expected {list(state.groups)}")
    return problems


def _tensor_diff(name: str, t: torch.Tensor, saved: Saved) -> list[str]:
    if t.dtype != saved.value.dtype:
        return [f"{name!r} has dtype {t.dtype}, expected {saved.value.dtype}"]
    if t.shape != saved.value.shape:
        return [f"{name!r} has shape {list(t.shape)}, expected {list(saved.value.shape)}"]
    if t.device != saved.device:
        return [f"{name!r} is on {t.device}, expected {saved.device}"]
    if not torch.equal(bits(t), bits(saved.value)):
        changed = int((t.detach().cpu() != saved.value).sum())
        return [f"{name!r} differs from the original in {changed} of {t.numel()} elements"]
    return []


def perturb(model: nn.Module, seed: int = 0) -> None:
    """Change every element of every parameter and buffer in place (tied storage once)."""
    generator = torch.Generator().manual_seed(seed)
    seen: set[tuple[object, ...]] = set()
    for t, _ in named_tensors(model).values():
        key = storage_key(t)
        if key in seen or t.numel() == 0:
            continue
        seen.add(key)
        with writable(t):
            _perturb_tensor(t, generator)


class writable:
    """Allow an in-place write: under no_grad, and inference mode for inference tensors (HQQ)."""

    def __init__(self, t: torch.Tensor) -> None:
        self._mode: Any = torch.inference_mode() if t.is_inference() else torch.no_grad()

    def __enter__(self) -> None:
        self._mode.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)


def _perturb_tensor(t: torch.Tensor, generator: torch.Generator) -> None:
    if t.dtype == torch.bool:
        t.logical_not_()
    elif t.is_floating_point():
        step = torch.rand(t.shape, generator=generator) * 0.5 + 0.25
        t.add_(step.to(t.device, t.dtype).abs().clamp_min(0.25))
    else:
        t.add_(1)


def reset(model: nn.Module, state: State) -> None:
    """Put ``state`` back into ``model`` (values, dtypes, devices and ties), whatever changed."""
    now = named_tensors(model)
    if deep(model):
        _reset_in_place(model, now, state)
        return
    with torch.no_grad():
        for name, saved in state.tensors.items():
            if name in now:
                now[name][0].data = saved.value.to(saved.device, copy=True)
    for group in state.groups:
        _rebind(model, group)


def _reset_in_place(model: nn.Module, now: dict[str, tuple[torch.Tensor, bool]],
                    state: State) -> None:
    """Write a quantized model's leaves back in place, then re-tie its registered parameters.

    A rebind would leave the backend reading its old tensors (bitsandbytes' ``state.CB``
    shares the weight's storage), so values are copied; what cannot be copied back (a leaf
    gone, new, or of another dtype or shape) raises ValueError before anything is written.
    """
    from pytest_invarlock.hf_adapter.leaves import misfits, write_in_place

    tensors = {n: t for n, (t, _) in now.items()}
    values = {n: saved.value for n, saved in state.tensors.items()}
    wrong = misfits(tensors, values)
    if wrong:
        raise ValueError(f"cannot write {wrong[:3]} back in place (gone, new, or another dtype "
                         "or shape)")
    write_in_place(tensors, values)
    names = set(registered(model))
    for group in state.groups:
        if set(group) <= names:
            _rebind(model, group)


def _rebind(model: nn.Module, group: tuple[str, ...]) -> None:
    now = named_tensors(model)
    head, _ = now[group[0]]
    for name in group[1:]:
        path, _, leaf = name.rpartition(".")
        owner = model.get_submodule(path) if path else model
        if now[name][1]:
            # The slot takes the group's head tensor as is (a Parameter whenever it was one).
            owner._parameters[leaf] = cast(nn.Parameter, head)
        else:
            owner._buffers[leaf] = head


def logits(model: nn.Module) -> torch.Tensor:
    """Run a fixed batch of token ids through ``model`` in eval mode and return its logits."""
    config: Any = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = int(getattr(text, "vocab_size", 0) or 0)
    if vocab <= 0:
        raise ValueError(f"{type(model).__name__} has no config.vocab_size to build input ids from")
    device = next(model.parameters()).device
    ids = ((torch.arange(2 * 8).reshape(2, 8) * 7 + 3) % vocab).to(device)
    inputs = {"input_ids": ids}
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(**inputs)
    finally:
        model.train(was_training)
    found = getattr(out, "logits", None)
    result: torch.Tensor = found if found is not None else out.last_hidden_state
    return result.detach().cpu()
