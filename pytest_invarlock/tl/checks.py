"""The checks of the ``transformer_lens`` profile: an architecture adapter against its real model.

Each check is ``check_<behaviour>(adapter, model, ctx)``: ``adapter`` is an instance of the
adapter class under test made from the model's config (as TransformerLens's factory makes one),
``model`` the untouched tiny HF model of architecture ``ctx.model_label``. Truth is read from
``model`` only: its module tree, ``named_parameters(remove_duplicate=False)``, its state dict and
its logits. A check that needs a bridge builds it over a copy (bridging rewires the model it
wraps), so no check changes the subject.

Messages name the architecture, the TransformerLens path or HF key at fault and the fix.
"""

from __future__ import annotations

import atexit
import copy
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pytest_invarlock.checking import MUST, SHOULD, Check, CheckContext, Problems, check
from pytest_invarlock.errors import CheckFailed, CheckNotApplicable
from pytest_invarlock.tl import bridge as tlb
from pytest_invarlock.tl import tiny

#: canonical TransformerLens parameter names -> (the subcomponent they live on, the HF leaf);
#: the subcomponent is looked up in the component's mapping, the first present alias wins
ATTENTION_PARAMETERS: dict[str, tuple[tuple[str, ...], str]] = {
    "W_Q": (("q",), "weight"), "W_K": (("k",), "weight"), "W_V": (("v",), "weight"),
    "W_O": (("o",), "weight"), "b_Q": (("q",), "bias"), "b_K": (("k",), "bias"),
    "b_V": (("v",), "bias"), "b_O": (("o",), "bias"),
}
MLP_PARAMETERS: dict[str, tuple[tuple[str, ...], str]] = {
    "W_in": (("input", "in", "fc_in"), "weight"), "W_out": (("out", "fc_out"), "weight"),
    "W_gate": (("gate",), "weight"), "b_in": (("input", "in", "fc_in"), "bias"),
    "b_out": (("out", "fc_out"), "bias"), "b_gate": (("gate",), "bias"),
}
#: top-level components and their canonical parameters (TL name -> HF leaf)
TOP_PARAMETERS: dict[str, dict[str, str]] = {
    "embed": {"W_E": "weight"}, "pos_embed": {"W_pos": "weight"},
    "unembed": {"W_U": "weight", "b_U": "bias"},
}
NORM_PARAMETERS = {"w": "weight", "b": "bias"}


def _arch(ctx: CheckContext) -> str:
    return ctx.model_label


def _cls(adapter: Any) -> type:
    return type(adapter)


def _where(adapter: Any, ctx: CheckContext) -> str:
    return f"{type(adapter).__name__} on {_arch(ctx)}"


@contextmanager
def _stage(what: str) -> Iterator[None]:
    """Turn an exception of TransformerLens into a failure naming what was being done.

    The process's checkpoint directory (a random temporary name) is spelled ``<checkpoints>``,
    so the same failure reads the same in every run's results file.
    """
    try:
        yield
    except (CheckFailed, CheckNotApplicable):
        raise
    except Exception as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        if _scratch.cache_info().currsize:
            detail = detail.replace(str(_scratch()), "<checkpoints>")
        raise CheckFailed(f"{what} raised {detail[:400]}") from exc


def _build(adapter: Any, model: nn.Module, ctx: CheckContext) -> tuple[Any, nn.Module]:
    with _stage("building the bridge (build_bridge_from_module)"):
        return tlb.build(model, _cls(adapter), _arch(ctx))


def _hf_logits(model: nn.Module) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    inputs = tiny.inputs(model)
    return inputs, tlb.hf_output(model, inputs)


# --------------------------------------------------------------------------- the mapping


@check(level=MUST, why="every hook, cache and patch of TransformerLens addresses a module "
       "through the mapping: a path that names another module or none corrupts analyses "
       "silently")
def check_component_paths_resolve(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """Every component of the mapping (every block, every nested submodule) is on the real model.

    The HF path the mapping declares (component names joined down the mapping, with the block
    index) resolves on the real model; ``translate_transformer_lens_path`` returns exactly that
    path; ``get_component`` returns exactly that module. Optional components may be absent.
    """
    problems = Problems()
    found = tlb.components(adapter, model)
    if not found:
        raise CheckFailed(f"the component mapping of {_where(adapter, ctx)} is empty; fill "
                          "component_mapping in the adapter's __init__")
    for c in found:
        if c.hf_path is None:
            continue  # synthetic: no HF module by design
        try:
            real = tlb.resolve(model, c.hf_path)
        except (AttributeError, IndexError, TypeError, ValueError):
            if not c.optional:
                problems.add(f"{c.tl_path} declares HF path {c.hf_path!r}, which the "
                             f"{type(model).__name__} does not have")
            continue
        try:
            translated = adapter.translate_transformer_lens_path(c.tl_path)
        except Exception as exc:
            problems.add(f"translate_transformer_lens_path({c.tl_path!r}) raised "
                         f"{type(exc).__name__}: {exc}")
            continue
        if translated != c.hf_path:
            problems.add(f"translate_transformer_lens_path({c.tl_path!r}) returned "
                         f"{translated!r}, but the mapping declares {c.hf_path!r}")
            continue
        try:
            got = adapter.get_component(model, c.tl_path)
        except Exception as exc:
            problems.add(f"get_component(model, {c.tl_path!r}) raised {type(exc).__name__}: "
                         f"{exc}")
            continue
        if got is not real:
            problems.add(f"get_component(model, {c.tl_path!r}) returned a "
                         f"{type(got).__name__}, not the {type(real).__name__} at {c.hf_path}")
    problems.raise_if_any("make each component's name the path of "
                          "its module relative to its parent in the HF model, and keep "
                          "translation and lookup to that path")


#: canonical matrices whose shape must have the model width as one dimension
WIDE = frozenset({"W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_gate", "W_E", "W_U"})


def _canonical(adapter: Any, model: nn.Module) -> Iterator[tuple[str, str, str]]:
    """Yield (TL parameter path, the HF parameter it should translate to, the TL name).

    Only the parameters the architecture has: the subcomponent is in the mapping, and the
    module it declares is on the real model and holds a tensor of that leaf (a layer norm
    without affine weights has no ``ln.w``; a ViT's patch embedding has no ``W_E``; the
    attention of a hybrid's recurrent layer is absent).
    """
    for c in tlb.components(adapter, model):
        if c.hf_path is None:
            continue
        last = c.tl_path.rsplit(".", 1)[-1]
        subs = getattr(c.bridge, "submodules", None) or {}
        found: list[tuple[str, str, str]] = []
        table: dict[str, tuple[tuple[str, ...], str]] = {}
        if last == "attn":
            table = ATTENTION_PARAMETERS
        elif last == "mlp":
            table = MLP_PARAMETERS
        for name, (aliases, leaf) in table.items():
            sub = next((a for a in aliases if a in subs), None)
            if sub is None or getattr(subs[sub], "name", None) is None or tlb.derived(
                    c.bridge, sub, subs[sub]):
                continue
            found.append((name, f"{c.hf_path}.{subs[sub].name}", leaf))
        if "." not in c.tl_path and last in TOP_PARAMETERS:
            found += [(name, c.hf_path, leaf) for name, leaf in TOP_PARAMETERS[last].items()]
        if last.startswith("ln") and not subs:
            found += [(name, c.hf_path, leaf) for name, leaf in NORM_PARAMETERS.items()]
        for name, module_path, leaf in found:
            try:
                held = getattr(tlb.resolve(model, module_path), leaf, None)
            except (AttributeError, IndexError, TypeError, ValueError):
                continue
            if isinstance(held, torch.Tensor):
                yield f"{c.tl_path}.{name}", f"{module_path}.{leaf}", name


@check(level=MUST, why="analyses read W_Q, W_in, W_U... through these paths; a name that "
       "translates to another parameter, or to none, breaks every such analysis")
def check_parameter_paths_translate(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """Each canonical TL parameter path the architecture has names its real HF parameter.

    ``W_Q/W_K/W_V/W_O``, ``W_in/W_out/W_gate``, ``b_*``, ``ln*.w``/``ln*.b``, ``W_E``,
    ``W_pos``, ``W_U``/``b_U`` translate (``translate_transformer_lens_path``) to the parameter
    of the module the mapping declares, which is in ``named_parameters(remove_duplicate=False)``
    with a compatible shape: the projections and the embedding/unembedding have the model
    width as one dimension, biases are one-dimensional. A parameter the declared module does
    not hold is not the architecture's, and is skipped.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    config: Any = getattr(model, "config", None)
    width = getattr(config.get_text_config(), "hidden_size", None) if config else None
    problems = Problems()
    for tl_path, declared, name in _canonical(adapter, model):
        try:
            translated = adapter.translate_transformer_lens_path(tl_path)
        except Exception as exc:
            problems.add(f"translate_transformer_lens_path({tl_path!r}) raised "
                         f"{type(exc).__name__}: {exc}")
            continue
        if translated != declared:
            problems.add(f"{tl_path} translates to {translated!r}, not to {declared!r} (the "
                         "parameter of the module the mapping declares)")
        elif translated not in params:
            problems.add(f"{tl_path} translates to {translated!r}, a tensor of the "
                         f"{type(model).__name__} that is no parameter")
        else:
            shape = tuple(params[translated].shape)
            if name.startswith("b") and len(shape) != 1:
                problems.add(f"{tl_path} translates to {translated!r} of shape {shape}, not "
                             "a bias")
            elif name in WIDE and width is not None and width not in shape:
                problems.add(f"{tl_path} translates to {translated!r} of shape {shape}, "
                             f"which lacks the model width {width}")
    problems.raise_if_any("map the component to the HF module that owns this parameter, and "
                          "keep translation to that module's parameter")


#: (earlier roles, later role) of a block's sublayers: the earlier ones run first in a forward
ORDER = {"attn": (("q", "k", "v"), "o"), "mlp": (("gate", "in", "input", "fc_in"), "out")}
#: (linear role, nonlinear role): the later role's input is linear in the first one's output
#: (attention is linear in V, a gated MLP in its up projection), not in the second's
LINEAR = {"attn": ("v", "k"), "mlp": ("in", "gate")}


Roles = dict[str, tuple[str, nn.Module]]


def _sublayers(adapter: Any, model: nn.Module) -> Iterator[tuple[str, str, Roles]]:
    """Yield (block TL path, attn or mlp, role -> (TL path, the real module)) for every block.

    Only roles declared by the mapping (not derived by a splitting bridge) whose path resolves
    to a module of the real model.
    """
    found = tlb.components(adapter, model)
    by_path = {c.tl_path: c for c in found}
    for c in found:
        head, _, last = c.tl_path.rpartition(".")
        if last not in ORDER or head not in by_path or not head.rpartition(".")[2].isdigit():
            continue
        roles: Roles = {}
        for role in (*ORDER[last][0], ORDER[last][1]):
            sub = by_path.get(f"{c.tl_path}.{role}")
            if sub is None or sub.hf_path is None:
                continue
            try:
                module = tlb.resolve(model, sub.hf_path)
            except (AttributeError, IndexError, TypeError, ValueError):
                continue
            if isinstance(module, nn.Module):
                roles[role] = (sub.hf_path, module)
        yield c.tl_path, last, roles


def _trace(model: nn.Module, inputs: dict[str, torch.Tensor], watch: dict[str, nn.Module],
           scale: nn.Module | None = None) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Run the model once; return the order the watched modules first ran in and their inputs.

    ``scale``: a module whose output is doubled during this forward.
    """
    order: list[str] = []
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for role, module in watch.items():
        def hook(_m: nn.Module, args: tuple[Any, ...], role: str = role) -> None:
            if role not in seen and args and isinstance(args[0], torch.Tensor):
                order.append(role)
                seen[role] = args[0].detach().clone()
        handles.append(module.register_forward_pre_hook(hook))
    if scale is not None:
        handles.append(scale.register_forward_hook(
            lambda _m, _a, out: out * 2 if isinstance(out, torch.Tensor) else out))
    try:
        tlb.hf_output(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return order, seen


@check(level=MUST, why="a mapping that names the wrong module of the right shape still computes "
       "the right logits, but every hook, activation and weight read through it is another "
       "layer's: W_in reads the down projection, hook_v the keys")
def check_component_roles_match_the_model(adapter: Any, model: nn.Module,
                                          ctx: CheckContext) -> None:
    """Each block's sublayers play the role their TL name says, by the real model's data flow.

    On the real model: q, k, v and the gate/up projections run before o and the down
    projection of their block; and where a swap is evident, the later projection's input is
    linear in what the mapping calls ``v`` (``in``) but not in what it calls ``k``
    (``gate``): doubling the output of the value (up) projection doubles that input exactly.
    A role the mapping does not declare, or whose module does not run, is not judged.
    """
    inputs = tiny.inputs(model)
    problems = Problems()
    for block, kind, roles in _sublayers(adapter, model):
        watch = {role: module for role, (_path, module) in roles.items()}
        order, seen = _trace(model, inputs, watch)
        later = ORDER[kind][1]
        for role in ORDER[kind][0]:
            if role in order and later in order and order.index(role) > order.index(later):
                problems.add(f"{block}.{role} ({roles[role][0]}) runs after {block}.{later} "
                             f"({roles[later][0]}) in the real model: the two are swapped or "
                             "misnamed")
        linear, other = LINEAR[kind]
        if later not in seen or linear not in roles or other not in roles:
            continue
        base = seen[later]
        doubles = {}
        for role in (linear, other):
            _, scaled = _trace(model, inputs, {later: roles[later][1]}, roles[role][1])
            doubles[role] = later in scaled and torch.allclose(scaled[later], 2 * base,
                                                               rtol=1e-5, atol=1e-6)
        if doubles[other] and not doubles[linear]:
            problems.add(f"{block}.{later}'s input is linear in {block}.{other} "
                         f"({roles[other][0]}) and not in {block}.{linear} ({roles[linear][0]}): "
                         f"the mapping has {linear} and {other} swapped")
    problems.raise_if_any("name each sublayer after the HF module that plays that role (q/k/v/o "
                          "of attention; gate, in (up) and out (down) of the MLP)")


def _expected_tl_key(found: list[tlb.Component], key: str) -> str | None:
    c = tlb.owner(found, key)
    if c is None or c.hf_path is None:
        return None
    return f"{c.tl_path}.{key[len(c.hf_path) + 1:]}"


def _back(adapter: Any, found: list[tlb.Component], tl_key: str) -> str | None:
    """Translate a TL key back to HF: its longest component path, translated, plus the leaf."""
    paths = sorted((c.tl_path for c in found if c.hf_path is not None), key=len, reverse=True)
    for path in paths:
        if tl_key.startswith(path + "."):
            try:
                return f"{adapter.translate_transformer_lens_path(path)}.{tl_key[len(path) + 1:]}"
            except Exception:
                return None
    return None


@check(level=MUST, why="TransformerLens builds state dicts and loads weights through key "
       "conversion; a key left unconverted or converted to the wrong component is a weight "
       "silently lost or written to the wrong place")
def check_key_conversion_round_trips(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """``convert_hf_key_to_tl_key`` is the exact inverse of path translation, deterministically.

    Every key of the real model's state dict under a mapped component converts to the TL path
    of the deepest component that owns it plus the same leaf, translates back to the same key,
    and converts the same with the mapping iterated in reverse and the keys in another order.
    """
    found = tlb.components(adapter, model)
    keys = list(model.state_dict())
    problems = Problems()
    converted: dict[str, str] = {}
    for key in keys:
        want = _expected_tl_key(found, key)
        if want is None:
            continue
        try:
            got = adapter.convert_hf_key_to_tl_key(key)
        except Exception as exc:
            problems.add(f"convert_hf_key_to_tl_key({key!r}) raised {type(exc).__name__}: {exc}")
            continue
        converted[key] = got
        if got == key:
            problems.add(f"{key} is not converted (returned unchanged; expected {want!r})")
        elif got != want:
            back = _back(adapter, found, got)
            problems.add(f"{key} converts to {got!r}, not {want!r}" + (
                "" if back == key else f", and {got!r} translates back to {back!r}"))
    again = tlb.new_adapter(_cls(adapter), model, _arch(ctx))
    mapping = again.get_component_mapping() or {}
    again.component_mapping = dict(reversed(list(mapping.items())))
    order = list(converted)
    random.Random(0).shuffle(order)
    for key in order:
        with _stage(f"convert_hf_key_to_tl_key({key!r}) on a second adapter"):
            got = again.convert_hf_key_to_tl_key(key)
        if got != converted[key]:
            problems.add(f"{key} converts to {converted[key]!r} with the mapping in its order "
                         f"and to {got!r} with it reversed")
    problems.raise_if_any("convert every key under a component "
                          "(at any depth) to that component's TL path plus the key's leaf, "
                          "independently of the mapping's order")


# --------------------------------------------------------------------------- preprocessing


def _tl_state(adapter: Any, model: nn.Module, ctx: CheckContext) -> dict[str, torch.Tensor]:
    bridge, _ = _build(adapter, model, ctx)
    with _stage("the bridge's state_dict()"):
        return {k: v.detach().clone() for k, v in bridge.state_dict().items()}


@check(level=MUST, why="process_weights hands preprocess_weights the live weights of the "
       "model: an in-place write corrupts the model, and keys or shapes it changes break "
       "the loading that follows")
def check_preprocess_weights_keeps_keys_and_inputs(adapter: Any, model: nn.Module,
                                                   ctx: CheckContext) -> None:
    """``preprocess_weights`` keeps keys and shapes, writes no input tensor, is deterministic.

    It is given the bridge's state dict (TL keys, as ``process_weights`` gives it) and must
    return a dict with the same keys and shapes, leave every tensor it was given as it was, and
    return equal tensors for an equal input.
    """
    state = _tl_state(adapter, model, ctx)
    given = {k: v.clone() for k, v in state.items()}
    with _stage("preprocess_weights"):
        first = adapter.preprocess_weights({k: v for k, v in given.items()})
        second = adapter.preprocess_weights({k: v.clone() for k, v in state.items()})
    problems = Problems()
    for key, tensor in state.items():
        if not torch.equal(given[key], tensor):
            problems.add(f"the input tensor {key} was written in place")
    lost = sorted(set(state) - set(first))
    added = sorted(set(first) - set(state))
    if lost:
        problems.add(f"keys dropped: {', '.join(lost[:5])}")
    if added:
        problems.add(f"keys added: {', '.join(added[:5])}")
    for key in sorted(set(state) & set(first)):
        if tuple(first[key].shape) != tuple(state[key].shape):
            problems.add(f"{key} changed shape {tuple(state[key].shape)} -> "
                         f"{tuple(first[key].shape)}")
        elif key in second and not torch.equal(first[key], second[key]):
            problems.add(f"{key} differs between two calls on equal inputs")
    problems.raise_if_any("build new tensors (never write the ones "
                          "given), keep every key and its shape, and draw nothing at random")


@check(level=SHOULD, why="a caller that reuses the dict it passed (to compare, or to retry) "
       "sees preprocessed values under the original keys")
def check_preprocess_weights_leaves_input_dict(adapter: Any, model: nn.Module,
                                               ctx: CheckContext) -> None:
    """``preprocess_weights`` returns its result without reassigning the dict it was given."""
    state = _tl_state(adapter, model, ctx)
    given = dict(state)
    with _stage("preprocess_weights"):
        adapter.preprocess_weights(given)
    changed = sorted(k for k in set(state) | set(given)
                     if k not in given or k not in state or given[k] is not state[k])
    if changed:
        raise CheckFailed(f"preprocess_weights reassigned "
                          f"{len(changed)} entries of the dict it was given ({', '.join(changed[:5])}"
                          f"{', ...' if len(changed) > 5 else ''}); copy the dict "
                          "(state_dict = dict(state_dict)) before writing results into it")


# --------------------------------------------------------------------------- the bridge


@check(level=MUST, why="a bridge that changes the weights of the model it wraps makes every "
       "result about a different model than the one loaded")
def check_bridge_leaves_hf_weights(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """Building the bridge changes no HF parameter or buffer (value, dtype, shape).

    Compared by each tensor's pre-bridge name (the bridge's ``._original_component`` wrappers
    removed). Tensors the bridge adds (e.g. a zero ``lm_head.bias`` buffer) are not changes.
    """
    before = {k: v.detach().clone() for k, v in tlb.tensors(model).items()}
    _, wrapped = _build(adapter, model, ctx)
    after = tlb.tensors(wrapped)
    problems = Problems()
    for name, old in before.items():
        new = after.get(name)
        if new is None:
            problems.add(f"{name} is gone from the model after bridging")
        elif new.dtype != old.dtype or new.shape != old.shape:
            problems.add(f"{name} changed from {old.dtype} {tuple(old.shape)} to {new.dtype} "
                         f"{tuple(new.shape)}")
        elif not torch.equal(new.detach(), old):
            problems.add(f"{name} changed value (largest change "
                         f"{float((new.detach().float() - old.float()).abs().max()):.3g})")
    problems.raise_if_any("leave the HF model's tensors as loaded "
                          "(prepare_model and the bridge components may wrap modules, never "
                          "rewrite their weights)")


@check(level=MUST, why="the bridge is the model under analysis: its logits must be the HF "
       "model's (fp32, eager attention)")
def check_bridge_logits_match_hf(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """The bridge's fp32 logits are the HF model's within rtol = atol = 1e-5 (``bridge.RTOL``)."""
    inputs, want = _hf_logits(model)
    bridge, _ = _build(adapter, model, ctx)
    with _stage("the bridge's forward"):
        got = tlb.bridge_output(bridge, inputs)
    if not tlb.close(got, want):
        raise CheckFailed(f"the bridge's logits differ from the HF "
                          f"model's: {tlb.gap(got, want)} (tolerance {tlb.RTOL:g} relative, "
                          f"{tlb.ATOL:g} absolute); map each component to the HF module it "
                          "stands for and run the HF computation unchanged")


def _edited(pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], bridge: Any,
            twin: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor,
                                                                     torch.Tensor]:
    """Return (bridge, twin) logits with every (ours, theirs, delta) edit made, then undone."""
    saved = [theirs.detach().clone() for _ours, theirs, _delta in pairs]
    with torch.no_grad():
        for ours, theirs, delta in pairs:
            ours.add_(delta)
            theirs.add_(delta)
    try:
        return tlb.bridge_output(bridge, inputs), tlb.hf_output(twin, inputs)
    finally:
        with torch.no_grad():
            for (ours, theirs, _delta), value in zip(pairs, saved, strict=True):
                ours.copy_(value)
                theirs.copy_(value)


@check(level=MUST, why="interpretability edits HF weights in place (ablations, patching); a "
       "bridge computing with a private copy ignores them and reports the unedited model")
def check_bridge_uses_live_weights(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """Editing HF parameters in place changes the bridge's output as it changes the HF model's.

    The same seeded edits are made in place to the wrapped model's parameters and to an
    untouched copy's; the change of the bridge's logits must equal the change of the copy's
    (tolerance as for the logits check). Changes are compared, not outputs, so a bridge whose
    logits are off by what no weight edit moves (a constant, a hook on the output) is judged by
    the logits check alone. Every parameter is
    edited at once first (one forward each); only when the changes differ is each parameter
    edited alone, to name those the bridge does not see.
    """
    inputs, _ = _hf_logits(model)
    bridge, wrapped = _build(adapter, model, ctx)
    with _stage("the bridge's forward"):
        bridge_before = tlb.bridge_output(bridge, inputs)
    twin = copy.deepcopy(model)
    twin_before = tlb.hf_output(twin, inputs)
    live, twin_tensors = tlb.tensors(wrapped), tlb.tensors(twin)
    edits = {name: (live[name], twin_tensors[name], tlb.noise(name, param, 0.05))
             for name, param in model.named_parameters()
             if name in live and name in twin_tensors}  # a tensor gone: the bridging check
    with _stage("the bridge's forward after an edit"):
        all_got, all_want = _edited(list(edits.values()), bridge, twin, inputs)
    if tlb.close(all_got - bridge_before, all_want - twin_before):
        return
    problems = Problems()
    for name, edit in edits.items():
        with _stage(f"the bridge's forward after editing {name}"):
            got, want = _edited([edit], bridge, twin, inputs)
        moved, wanted = got - bridge_before, want - twin_before
        if not tlb.close(moved, wanted):
            problems.add(f"editing {name} in place moves the HF model's logits by up to "
                         f"{float(wanted.abs().max()):.3g} but the bridge's by up to "
                         f"{float(moved.abs().max()):.3g}")
    if not problems:
        problems.add(f"editing every parameter at once moves the bridge's logits otherwise than "
                     f"the HF model's ({tlb.gap(all_got - bridge_before, all_want - twin_before)}), "
                     "though each edit alone moves them alike")
    problems.raise_if_any("compute with the HF module's own parameters (views of them for "
                          "split weights), never with copies made at bridge time")


@check(level=MUST, why="a bridge's state dict is how TransformerLens saves, copies and "
       "restores models: a weight it omits is silently not restored")
def check_bridge_state_dict_round_trips(adapter: Any, model: nn.Module,
                                        ctx: CheckContext) -> None:
    """The bridge's ``state_dict()`` fully restores a bridge over a perturbed copy (strict load).

    The state dict of a bridge over the model is loaded with ``strict=True`` into a bridge
    over a copy whose every parameter was perturbed (and every persistent buffer, so that one
    the state dict omits shows): every parameter and persistent buffer of that copy must then
    equal the model's (so the state dict holds every weight, fused or split), and its logits
    must equal the first bridge's bitwise.
    """
    inputs, _ = _hf_logits(model)
    bridge, _ = _build(adapter, model, ctx)
    with _stage("the bridge's state_dict() and forward"):
        state = {k: v.detach().clone() for k, v in bridge.state_dict().items()}
        want = tlb.bridge_output(bridge, inputs)
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        for name, tensor in perturbed.state_dict(keep_vars=True).items():
            if tensor.is_floating_point():
                tensor.add_(tlb.noise(name, tensor))
    other, wrapped = _build(adapter, perturbed, ctx)
    with _stage("load_state_dict(state, strict=True) into a bridge over a perturbed copy"):
        other.load_state_dict(state, strict=True)
        got = tlb.bridge_output(other, inputs)
    truth, restored = model.state_dict(), tlb.tensors(wrapped)
    problems = Problems()
    for name, tensor in truth.items():
        back = restored.get(name)
        if back is not None and not torch.equal(back.detach(), tensor):
            problems.add(f"{name} is not restored (its value after the load differs: no key "
                         "of the bridge's state_dict() carries it)")
    if not torch.equal(got, want):
        problems.add(f"the logits are not restored: {tlb.gap(got, want)}")
    problems.raise_if_any("give every HF parameter and persistent buffer a key of the "
                          "bridge's state dict, and load every key back into it")


# --------------------------------------------------------------------------- booting


@cache
def _scratch() -> Path:
    """Return this process's directory for saved checkpoints, removed when the process exits.

    Not ``ctx.workdir``: the Python API gives checks the current directory there.
    """
    found = Path(tempfile.mkdtemp(prefix="invarlock-tl-"))
    atexit.register(shutil.rmtree, found, True)
    return found


def _checkpoint(model: nn.Module, ctx: CheckContext) -> Path:
    directory = _scratch() / f"{ctx.adapter_name.replace(':', '-')}-{ctx.model_label}"
    if not (directory / "config.json").is_file():
        tlb.save_checkpoint(model, directory)
    return directory


def _boot_logits(adapter: Any, ctx: CheckContext, directory: Path, how: str,
                 inputs: dict[str, torch.Tensor]) -> tuple[str, torch.Tensor]:
    with _stage(f"TransformerBridge.boot_transformers on {how}"):
        booted = tlb.boot(directory, _cls(adapter), _arch(ctx))
        return type(booted.adapter).__name__, tlb.bridge_output(booted, inputs)


#: (adapter class, architecture, checkpoint) -> the boot of the checkpoint as saved, or why it
#: failed: both boot checks need it, and a boot is the costliest step of a case
_SAVED_BOOTS: dict[tuple[type, str, str], tuple[str, torch.Tensor] | CheckFailed] = {}


def _saved_boot(adapter: Any, ctx: CheckContext, directory: Path,
                inputs: dict[str, torch.Tensor]) -> tuple[str, torch.Tensor]:
    """Return (the booted adapter's class name, its logits) for the checkpoint as saved, once."""
    key = (_cls(adapter), _arch(ctx), str(directory))
    if key not in _SAVED_BOOTS:
        try:
            _SAVED_BOOTS[key] = _boot_logits(adapter, ctx, directory,
                                             f"{directory.name} (save_pretrained, safetensors)",
                                             inputs)
        except CheckFailed as exc:
            _SAVED_BOOTS[key] = exc
    found = _SAVED_BOOTS[key]
    if isinstance(found, CheckFailed):
        raise found
    return found


@check(level=MUST, why="users boot TransformerLens from checkpoints on disk; what transformers "
       "writes by default (config.json with architectures, model.safetensors) must boot to the "
       "same bridge as the model in memory")
def check_boot_from_saved_checkpoint(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """``boot_transformers`` on the saved model gives the in-memory bridge's logits.

    The directory holds what ``save_pretrained`` writes (``config.json`` with
    ``architectures``, ``model.safetensors``) and a word-level tokenizer. The booted bridge is
    compared with a bridge built over the model in memory with the same adapter, so the check
    judges loading (``prepare_loading``, detection, the weights read back), not the forward.
    """
    inputs, _ = _hf_logits(model)
    bridge, _ = _build(adapter, model, ctx)
    with _stage("the bridge's forward"):
        want = tlb.bridge_output(bridge, inputs)
    directory = _checkpoint(model, ctx)
    how = f"{directory.name} (save_pretrained, safetensors)"
    used, got = _saved_boot(adapter, ctx, directory, inputs)
    if not tlb.close(got, want):
        raise CheckFailed(f"booted from {how}, the bridge ({used}) gives logits that differ "
                          f"from the in-memory bridge's: {tlb.gap(got, want)}; load the "
                          "checkpoint as saved (dtype, config and weights untouched)")


@check(level=SHOULD, why="configs built in code or converted from other formats often lack "
       "architectures; TransformerLens then detects the architecture from model_type")
def check_boot_without_architectures(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """``boot_transformers`` on the checkpoint without ``architectures`` boots the same bridge.

    Compared with the boot of the checkpoint as saved; when that boot fails, the MUST check
    says why and this one does not apply.
    """
    inputs, _ = _hf_logits(model)
    directory = _checkpoint(model, ctx)
    try:
        _, want = _saved_boot(adapter, ctx, directory, inputs)
    except CheckFailed as exc:
        raise CheckNotApplicable("booting the checkpoint as saved fails "
                                 "(check_boot_from_saved_checkpoint says why)") from exc
    bare = tlb.without_architectures(directory, directory.with_name(directory.name + "-bare"))
    other = tlb.detected_head(bare, model)
    if other is not None and other != _arch(ctx):
        raise CheckNotApplicable(f"without architectures TransformerLens detects {other}, "
                                 f"another head of the same config class: the saved head "
                                 f"({_arch(ctx)}) cannot be named by the config")
    how = f"{directory.name} without config.architectures"
    used, got = _boot_logits(adapter, ctx, bare, how, inputs)
    if not tlb.close(got, want):
        raise CheckFailed(f"booted from {how}, the bridge ({used}) gives logits that differ "
                          f"from the boot with architectures: {tlb.gap(got, want)}; detect the "
                          "architecture from model_type and load as with architectures")


#: every check, in the order they run and are reported
CHECKS: list[Check[nn.Module]] = [
    check_component_paths_resolve, check_component_roles_match_the_model,
    check_parameter_paths_translate, check_key_conversion_round_trips,
    check_preprocess_weights_keeps_keys_and_inputs, check_preprocess_weights_leaves_input_dict,
    check_bridge_leaves_hf_weights, check_bridge_logits_match_hf, check_bridge_uses_live_weights,
    check_bridge_state_dict_round_trips, check_boot_from_saved_checkpoint,
    check_boot_without_architectures,
]
