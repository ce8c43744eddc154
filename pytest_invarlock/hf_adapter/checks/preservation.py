"""Checks that restore and the read-only calls keep what they do not own.

Tensor objects, requires_grad, buffer kinds, train/eval modes, hooks, attributes, config, and the
live storage a restore must write into.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pytest_invarlock.errors import CheckNotApplicable
from pytest_invarlock.hf_adapter import capabilities, state
from pytest_invarlock.hf_adapter.checks import CheckContext, Problems, check, discard_snapshot, summarize
from pytest_invarlock.hf_adapter.checks.values import baseline, cycle, not_judged, refused, snapshot_ways

# --------------------------------------------------------------------------- a mixed model


@contextmanager
def mixed_flags(model: nn.Module) -> Iterator[None]:
    """Put the model in a mixed train/eval mode with some requires_grad off; undo it afterwards.

    A call that switches modes (``model.train()``/``eval()``) or sets ``requires_grad`` anywhere
    then changes something observable, whichever way it switches.
    """
    modules = list(model.modules())
    # only floating-point tensors can require gradients (a quantized model has int8 ones)
    params = [p for p in model.parameters() if p.is_floating_point() or p.is_complex()]
    modes = [m.training for m in modules]
    grads = [p.requires_grad for p in params]
    try:
        for i, module in enumerate(modules):
            module.training = i % 2 == 1
        for i, param in enumerate(params):
            param.requires_grad_(i % 2 == 0)
        yield
    finally:
        for module, mode in zip(modules, modes, strict=True):
            module.training = mode
        for param, grad in zip(params, grads, strict=True):
            param.requires_grad_(grad)


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf


@dataclass(frozen=True)
class Held:
    """A parameter or buffer as reached by name: the object itself and its flags."""

    tensor: torch.Tensor
    is_parameter: bool
    requires_grad: bool
    persistent: bool


def held(model: nn.Module) -> dict[str, Held]:
    """Return every parameter and buffer by name (tied names included), the object kept."""
    found = {}
    for name, (t, is_param) in state.registered(model).items():  # objects modules hold
        owner, leaf = _owner(model, name)
        persistent = is_param or leaf not in owner._non_persistent_buffers_set
        found[name] = Held(t, is_param, t.requires_grad, persistent)
    return found


def modes(model: nn.Module) -> dict[str, bool]:
    """Return the training flag of every module by name."""
    return {name or "<model>": m.training for name, m in model.named_modules()}


def _kind(is_parameter: bool) -> str:
    return "Parameter" if is_parameter else "buffer"


def compare_held(before: dict[str, Held], after: dict[str, Held], call: str) -> list[str]:
    """Describe every tensor object, kind, requires_grad and persistence that ``call`` changed."""
    problems = [f"{call} removed {n!r}" for n in sorted(set(before) - set(after))]
    problems += [f"{call} added {n!r}" for n in sorted(set(after) - set(before))]
    for name in sorted(set(before) & set(after)):
        was, now = before[name], after[name]
        if was.is_parameter != now.is_parameter:
            problems.append(f"{call} turned the {_kind(was.is_parameter)} {name!r} into a "
                            f"{_kind(now.is_parameter)}")
        elif was.tensor is not now.tensor:
            problems.append(f"{call} replaced the {_kind(was.is_parameter)} object of {name!r}")
        if was.requires_grad != now.requires_grad:
            problems.append(f"{call} set {name!r}.requires_grad to {now.requires_grad} (it was "
                            f"{was.requires_grad})")
        if not was.is_parameter and was.persistent != now.persistent:
            what = "persistent" if now.persistent else "non-persistent"
            problems.append(f"{call} made the buffer {name!r} {what}")
    return problems


def compare_modes(before: dict[str, bool], after: dict[str, bool], call: str) -> list[str]:
    """Describe every module whose train/eval mode ``call`` switched."""
    word = {True: "train", False: "eval"}
    return [f"{call} switched module {name!r} from {word[was]} to {word[after[name]]} mode"
            for name, was in before.items() if name in after and after[name] != was]


# --------------------------------------------------------------------------- restore keeps objects

_RESTORE_FIX = ("Optimizers, hooks and wrappers hold the model's Parameter and buffer objects: "
                "restore() must copy values into the model's existing tensors (tensor.copy_ under "
                "torch.no_grad()) and leave everything else as it is: the objects, requires_grad, "
                "buffer persistence and every module's train/eval mode")


@check(mutates=True, why="callers hold references to parameters (optimizers, hooks, PEFT "
       "wrappers) and set flags and modes that a restore must not reset")
def check_restore_preserves_objects(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """restore() keeps tensor objects, requires_grad, buffer kinds and every module's mode."""
    problems = Problems()
    seen: list[tuple[dict[str, Held], dict[str, bool]]] = []

    def note() -> None:  # just before restore: only restore is to blame for what changes
        seen.append((held(model), modes(model)))

    skipped = []
    with mixed_flags(model), snapshot_ways(adapter, model) as ways:
        for way in ways:
            call = way.how.split("/")[1]
            if not cycle(adapter, model, way, before_put=note):
                skipped.append(refused(adapter, way))
                continue
            objects, training = seen[-1]
            for problem in compare_held(objects, held(model), call):
                problems.add(problem)
            for problem in compare_modes(training, modes(model), call):
                problems.add(problem)
        if len(skipped) == len(ways):
            raise CheckNotApplicable("; ".join(skipped))
    problems.raise_if_any(_RESTORE_FIX)


# --------------------------------------------------------------------------- live storage


def _reallocate(model: nn.Module) -> str:
    """Give every tensor new storage, keeping the Parameter objects; return what was done.

    What ``model.to(...)`` does to a model that changes dtype or device, for every dtype (a
    float64 model's ``.to(torch.float64)`` would keep its storage) and at one copy's cost.
    """
    model._apply(lambda t: t.clone())  # type: ignore[no-untyped-call]  # torch leaves it unannotated
    return "model._apply(lambda t: t.clone()) (what model.to() does to the storage)"


@check(mutates=True, why="model.to(), accelerate and offloading replace tensor storage under "
       "the same Parameter objects; a restore into stale storage silently does nothing")
def check_restore_writes_live_storage(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """restore() writes into the tensors the model has now, after .to() replaced their storage."""
    if capabilities.forbids_moves(adapter, model):
        raise CheckNotApplicable("the model is placed by its backend (the adapter claims "
                                 "device_movement_managed_by_backend, or the model is quantized)")
    problems = Problems()
    done: list[str] = []
    old: list[torch.UntypedStorage] = []

    def reallocate() -> None:  # the old storage stays alive: its addresses cannot be reused
        old.extend(t.untyped_storage() for t, _ in state.named_tensors(model).values())
        done.append(_reallocate(model))

    judged, skipped, notes = 0, [], []
    with snapshot_ways(adapter, model) as ways:
        for way in ways:
            before = state.capture(model)
            if not cycle(adapter, model, way, before_put=reallocate):
                skipped.append(refused(adapter, way))
                continue
            found = state.diff(model, before)
            old.clear()
            if found:  # what a plain round-trip fails too is check_snapshot_roundtrip_*'s
                state.reset(model, before)
                base = baseline(adapter, model, way)
                if base.everything:
                    skipped.append(not_judged(way))
                    continue
                found = base.keep(found)
                notes.append(base.note())
            judged += 1
            for problem in found:
                problems.add(f"after {done[-1]} and {way.how.split('/')[1]}, {problem} (still "
                             "perturbed: the restore wrote into storage the model no longer uses)")
    if not judged:
        raise CheckNotApplicable("; ".join(skipped))
    problems.raise_if_any("Look the tensors up on the model at restore time "
                          "(named_parameters()/named_buffers()) and copy into them; never keep "
                          "tensors, .data or data_ptr() from load_model() or snapshot() time"
                          + "".join(dict.fromkeys(notes)))


# --------------------------------------------------------------------------- read-only calls

#: Hook dictionaries of a module (the with-kwargs and always-called ones included).
MODULE_HOOKS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
                "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
                "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")
#: Process-wide hook dictionaries of torch.nn.modules.module.
GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_hooks_with_kwargs",
                "_global_forward_hooks_always_called", "_global_forward_pre_hooks",
                "_global_backward_hooks", "_global_backward_pre_hooks",
                "_global_buffer_registration_hooks", "_global_module_registration_hooks",
                "_global_parameter_registration_hooks")
_SCALARS = (bool, int, float, str, bytes, type(None))


def _hooks(model: nn.Module) -> dict[str, list[tuple[Any, Any]]]:
    """Return every hook dict's (key, hook) items: modules', parameters' and the global ones."""
    import torch.nn.modules.module as torch_module

    found: dict[str, list[tuple[Any, Any]]] = {}
    for name, module in model.named_modules():
        for attr in MODULE_HOOKS:
            hooks = getattr(module, attr, None)
            if hooks:
                found[f"{name or '<model>'}.{attr}"] = list(hooks.items())
    for name, param in model.named_parameters():
        for attr in ("_backward_hooks", "_post_accumulate_grad_hooks"):
            hooks = getattr(param, attr, None)
            if hooks:
                found[f"{name}.{attr}"] = list(hooks.items())
    for attr in GLOBAL_HOOKS:
        hooks = getattr(torch_module, attr, None)
        if hooks:
            found[f"torch.nn.modules.module.{attr}"] = list(hooks.items())
    return found


def _attributes(model: nn.Module) -> dict[str, tuple[frozenset[str], dict[str, Any]]]:
    """Return each module's __dict__ keys, and the values not compared elsewhere (no dicts).

    Tensors, submodules and hooks live in dicts and ``training`` is a mode: each has its own
    comparison.
    """
    found = {}
    for name, m in model.named_modules():
        values = {k: v for k, v in vars(m).items() if not isinstance(v, dict) and k != "training"}
        found[name or "<model>"] = (frozenset(vars(m)), values)
    return found


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    return type(a) is type(b) and isinstance(a, _SCALARS) and a == b


def _config(model: nn.Module) -> dict[str, Any] | None:
    to_dict = getattr(getattr(model, "config", None), "to_dict", None)
    return dict(to_dict()) if callable(to_dict) else None


@dataclass
class Look:
    """Everything a read-only call must leave as it was."""

    values: state.State
    objects: dict[str, Held]
    modules: dict[str, nn.Module]
    training: dict[str, bool]
    hooks: dict[str, list[tuple[Any, Any]]]
    attributes: dict[str, tuple[frozenset[str], dict[str, Any]]]
    config: dict[str, Any] | None


def look(model: nn.Module, values: state.State | None = None) -> Look:
    """Record what a read-only call must not change (``values`` reused when still current)."""
    return Look(values or state.capture(model), held(model), dict(model.named_modules()),
                modes(model), _hooks(model), _attributes(model), _config(model))


def _few(items: list[str]) -> str:
    return summarize(items, 3, ", ")


def compare_look(model: nn.Module, was: Look, call: str) -> list[str]:
    """Describe, one sentence per kind of change, what ``call`` changed."""
    found = []
    changed = state.diff(model, was.values)
    if changed:
        found.append(f"{call} changed tensors (values, dtypes, devices or ties): {_few(changed)}")
    objects = compare_held(was.objects, held(model), call)
    if objects:
        found.append(f"{call} changed parameters or buffers: {_few(objects)}")
    modules = dict(model.named_modules())
    swapped = [repr(n or "<model>") for n in was.modules if modules.get(n) is not was.modules[n]]
    swapped += [f"{n!r} (added)" for n in modules if n not in was.modules]
    if swapped:
        found.append(f"{call} replaced, removed or added modules: {_few(swapped)}")
    training = compare_modes(was.training, modes(model), call)
    if training:
        found.append(f"{call} changed train/eval modes: {_few(training)} (a mixed mode was set "
                     "before the call)")
    hooks = _hook_changes(was.hooks, _hooks(model))
    if hooks:
        found.append(f"{call} changed hooks: {_few(hooks)}")
    attrs = _attribute_changes(was.attributes, _attributes(model))
    if attrs:
        found.append(f"{call} changed module attributes: {_few(attrs)}")
    config = _config(model)
    if config != was.config:
        before, after = was.config or {}, config or {}
        keys = sorted(k for k in set(before) | set(after) if before.get(k, ...) != after.get(k, ...))
        found.append(f"{call} changed config.to_dict() keys {_few(keys)}")
    return found


def _hook_changes(was: dict[str, list[tuple[Any, Any]]],
                  now: dict[str, list[tuple[Any, Any]]]) -> list[str]:
    found = []
    for key in sorted(set(was) | set(now)):
        before, after = dict(was.get(key, [])), dict(now.get(key, []))
        added = [k for k in after if k not in before or after[k] is not before[k]]
        removed = [k for k in before if k not in after]
        what = ([f"{len(added)} added"] if added else []) + (
            [f"{len(removed)} removed"] if removed else [])
        if what:
            found.append(f"{key} ({', '.join(what)})")
    return found


def _attribute_changes(was: dict[str, tuple[frozenset[str], dict[str, Any]]],
                       now: dict[str, tuple[frozenset[str], dict[str, Any]]]) -> list[str]:
    found = []
    for name, (keys, values) in was.items():
        if name not in now:
            continue  # a removed module is reported as such
        now_keys, now_values = now[name]
        found += [f"added {name}.{k}" for k in sorted(now_keys - keys)]
        found += [f"removed {name}.{k}" for k in sorted(keys - now_keys)]
        found += [f"replaced {name}.{k}" for k, v in values.items()
                  if k in now_values and not _same(v, now_values[k])]
    return found


@check(mutates=True, why="describe, snapshot and can_handle are observations; an observation "
       "that edits the model changes what every later step sees")
def check_read_only_calls_leave_model_unchanged(adapter: Any, model: nn.Module,
                                                ctx: CheckContext) -> None:
    """describe(), snapshot(), snapshot_chunked() and can_handle() leave the model as it was."""
    claim = capabilities.snapshot_claim(adapter)
    paths: list[str] = []

    def chunked() -> None:
        paths.append(adapter.snapshot_chunked(model, prefix="invarlock-check-"))

    calls: list[tuple[str, Callable[[], object], bool]] = [
        ("describe()", lambda: adapter.describe(model), False),
        ("snapshot()", lambda: adapter.snapshot(model), claim != "full"),
    ]
    if hasattr(adapter, "snapshot_chunked"):
        calls.append(("snapshot_chunked()", chunked, claim != "full"))
    calls.append(("can_handle()", lambda: adapter.can_handle(model), False))
    problems = Problems()
    try:
        with mixed_flags(model):
            was = look(model)
            for call, action, may_refuse in calls:
                try:
                    action()
                except Exception:
                    if not may_refuse:
                        raise
                found = compare_look(model, was, call)
                for problem in found:
                    problems.add(problem)
                if found:
                    was = look(model)
                else:
                    was = look(model, was.values)
    finally:
        for path in paths:
            discard_snapshot(path)
    problems.raise_if_any("These calls only read the model: never call train()/eval()/to()/"
                          "requires_grad_(), register hooks, set attributes or edit the config "
                          "in them (or undo every such change before returning)")


CHECKS = (
    check_restore_preserves_objects,
    check_restore_writes_live_storage,
    check_read_only_calls_leave_model_unchanged,
)
