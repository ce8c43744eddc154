"""Checks of quantized adapters: quantized for real, described, snapshotted early, loaded alike.

The model really holds quantized modules, describe() says which and how, a snapshot taken
before the first forward (where backends settle their state) restores exactly or is refused,
and two loads of one checkpoint are the same model.

They apply to adapters that declare ``quantized = True`` (the quantized lanes); the truth is the
module tree and every leaf the forward reads (:mod:`pytest_invarlock.hf_adapter.leaves`), never
the adapter's own account. Facts behind each check: ``research/quantized-backends-cpu.md``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pytest_invarlock.errors import CheckFailed, CheckNotApplicable
from pytest_invarlock.hf_adapter import leaves, state
from pytest_invarlock.hf_adapter.checks import MUST, CheckContext, Problems, check, summarize


def is_quantized_model(model: nn.Module) -> bool:
    """Return whether ``model`` holds quantized modules or backend state (see quantized_linears)."""
    return leaves.is_quantized(model) or bool(quantized_linears(model))


def _quantized_adapter(adapter: Any, model: nn.Module) -> None:
    """Refuse (not applicable) unless the adapter says it is quantized or its model is.

    An adapter written before ``quantized = True`` existed (a framework's own bitsandbytes
    adapter) is judged by the model it loaded.
    """
    if not getattr(adapter, "quantized", False) and not is_quantized_model(model):
        raise CheckNotApplicable("not a quantized adapter (it does not declare quantized = True "
                                 "and its model holds no quantized module)")


def _fresh(adapter: Any, ctx: CheckContext) -> nn.Module:
    """Load the subject's checkpoint again, as the subject was loaded, and view it deeply."""
    if ctx.model_path is None:
        raise CheckNotApplicable("the model was not loaded from a path")
    model: nn.Module = adapter.load_model(ctx.model_path, device=ctx.device)
    state.mark_deep(model)
    return model


#: leaf names of the scales a quantized linear keeps beside its weight (floating point, yet only
#: a quantized module has them): compressed-tensors, gptqmodel, bitsandbytes
SCALES = frozenset({"weight_scale", "weight_global_scale", "scales", "SCB", "absmax"})


def quantized_linears(model: nn.Module) -> list[str]:
    """Return the linear-like modules that hold quantized data, from the module tree and leaves.

    A module counts when it has ``in_features``/``out_features`` and directly holds a
    tensor-subclass weight, an integer tensor, a quantization scale, or backend state that is no
    parameter or buffer (bitsandbytes' quant_state and SCB, HQQ's meta, gptqmodel's caches); or
    carries a compressed-tensors ``quantization_scheme`` with weights (FP8 keeps a float weight).
    """
    modules = dict(model.named_modules())
    holders = {name for name, m in modules.items() if _linear(m) and getattr(
        getattr(m, "quantization_scheme", None), "weights", None) is not None}
    for name, leaf in leaves.leaves(model).items():
        path = _owner(modules, name)
        if path is None or not _linear(modules[path]):
            continue
        last = name.split("#", 1)[0].rpartition(".")[2]
        if (leaf.kind not in ("parameter", "buffer") or not leaf.tensor.is_floating_point()
                or last in SCALES):
            holders.add(path)
    return sorted(holders)


def stored_bits(model: nn.Module) -> set[int]:
    """Return the bit widths the quantized modules' weights hold, where the module says so.

    bitsandbytes' weight classes, HQQ's ``meta['nbits']``, gptqmodel's ``bits``, a
    compressed-tensors scheme's ``weights.num_bits``; a module that says nothing is left out.
    """
    found: set[int] = set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        kind = type(weight).__name__
        meta = vars(module).get("meta")
        scheme = getattr(getattr(module, "quantization_scheme", None), "weights", None)
        if kind == "Params4bit":
            found.add(4)
        elif kind == "Int8Params":
            found.add(8)
        elif isinstance(meta, dict) and isinstance(meta.get("nbits"), int):
            found.add(int(meta["nbits"]))
        elif scheme is not None and isinstance(getattr(scheme, "num_bits", None), int):
            found.add(int(scheme.num_bits))
        elif _linear(module) and isinstance(bits := getattr(module, "bits", None), int):
            found.add(bits)
    return found


def _linear(module: nn.Module) -> bool:
    return hasattr(module, "in_features") and hasattr(module, "out_features")


def _owner(modules: dict[str, nn.Module], leaf: str) -> str | None:
    """Return the path of the deepest module whose name prefixes a leaf name."""
    path = leaf.split("#", 1)[0]
    while path:
        path = path.rpartition(".")[0]
        if path in modules:
            return path
    return None


@check(level=MUST, why="some backends silently leave layers in full precision (GPT-2's Conv1D "
       "under torchao, quanto and HQQ): a 'quantized' verdict on a dense model proves nothing")
def check_model_is_quantized(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """A quantized adapter's model has at least one module that really holds quantized weights."""
    _quantized_adapter(adapter, model)
    if not quantized_linears(model):
        raise CheckFailed(f"{type(model).__name__} from {ctx.model_path} holds no quantized module "
                          "(every linear weight is a plain floating-point tensor); quantize it in "
                          "load_model, or decline the model in can_handle()/declines_config() when "
                          "the backend leaves its layers (e.g. Conv1D) unquantized")


@check(level=MUST, why="callers read describe()['quantization'] to know what was quantized and "
       "how; a wrong list hides layers left in full precision")
def check_describe_reports_quantization(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """describe()['quantization'] names the method, the bits and exactly the quantized modules."""
    _quantized_adapter(adapter, model)
    quant = adapter.describe(model).get("quantization")
    if quant is None and not getattr(adapter, "quantized", False):
        raise CheckNotApplicable("describe() reports no quantization (required of adapters that "
                                 "declare quantized = True, optional for others)")
    if not isinstance(quant, dict):
        raise CheckFailed(f"describe() has no 'quantization' dict (found {quant!r}); report "
                          "{'method', 'bits', 'group_size', 'quantized_modules'}")
    problems = Problems()
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    want = config.get("quant_method") if isinstance(config, dict) else getattr(
        config, "quant_method", None)
    want = getattr(want, "value", want)
    method = quant.get("method")
    if not isinstance(method, str) or not method or (want is not None and method != str(want)):
        problems.add(f"describe()['quantization']['method'] is {method!r}, the model's config says "
                     f"quant_method {want!r}")
    bits = quant.get("bits")
    widths = bits if isinstance(bits, list) and bits else [bits]  # mixed schemes list each
    if not all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 16 for b in widths):
        problems.add(f"describe()['quantization']['bits'] is {bits!r}, not a bit width (1-16) "
                     "or a list of the widths a mixed scheme uses")
    else:
        held = stored_bits(model)
        if held and set(widths) != held:
            problems.add(f"describe()['quantization']['bits'] is {bits!r}, the quantized modules "
                         f"hold {sorted(held)}-bit weights")
    truth = quantized_linears(model)
    listed = quant.get("quantized_modules")
    if not isinstance(listed, list) or sorted(map(str, listed)) != truth:
        got = sorted(map(str, listed)) if isinstance(listed, list) else listed
        extra = sorted(set(got) - set(truth)) if isinstance(got, list) else []
        missing = sorted(set(truth) - set(got)) if isinstance(got, list) else truth
        problems.add(f"describe()['quantization']['quantized_modules'] lists {_n(got)}, the model "
                     f"holds quantized data in {len(truth)} module(s); missing "
                     f"{summarize(missing) or 'none'}, not quantized {summarize(extra) or 'none'}")
    problems.raise_if_any("Report the quantization as the model holds it: the method from "
                          "config.quantization_config, the bit width, and the names of the modules "
                          "whose weights the backend replaced")


def _n(listed: object) -> str:
    return f"{len(listed)} module(s)" if isinstance(listed, list) else repr(listed)


@check(level=MUST, why="bitsandbytes, compressed-tensors and gptqmodel move, repack or decompress "
       "their state on the first forward: a snapshot taken before it must still restore exactly, "
       "or be refused")
def check_snapshot_before_first_forward(adapter: Any, model: nn.Module,
                                        ctx: CheckContext) -> None:
    """A snapshot taken right after loading, before any forward, restores exactly or is refused."""
    _quantized_adapter(adapter, model)
    fresh = _fresh(adapter, ctx)
    blob = adapter.snapshot(fresh)
    first = state.logits(fresh)  # the first forward: backends settle their state here
    settled = state.capture(fresh)
    state.perturb(fresh)
    perturbed = state.capture(fresh)
    try:
        adapter.restore(fresh, blob)
    except Exception as exc:
        changed = state.diff(fresh, perturbed)
        if changed or not str(exc).strip():
            what = f"changed the model ({summarize(changed)})" if changed else "gave no message"
            raise CheckFailed(f"restore() of a snapshot taken before the first forward refused "
                              f"({type(exc).__name__}) but {what}; a refusal says why and touches "
                              "nothing") from None
        return  # refusing a snapshot of the state before the backend settled it is honest
    problems = Problems()
    changed = state.diff(fresh, settled)
    if changed:
        problems.add(f"after restore() the tensors differ from the model's own after its first "
                     f"forward: {summarize(changed)}")
    for turn in ("first", "second"):
        if not torch.equal(state.bits(state.logits(fresh)), state.bits(first)):
            problems.add(f"the {turn} forward after restore() gives other logits than the model "
                         "gave before")
            break
    problems.raise_if_any(f"{ctx.adapter_name} on {ctx.model_label}: a snapshot taken before the "
                          "first forward must hold the backend's state wherever the forward will "
                          "read it (e.g. bitsandbytes' SCB moving into module.state), or restore() "
                          "must refuse it with a clear error")


@check(level=MUST, why="a checkpoint with keys the model does not load (MoE experts under some "
       "backends) gets random weights on every load: no verdict on it means anything")
def check_load_is_repeatable(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """Two loads of the same checkpoint give bit-identical leaves and logits."""
    _quantized_adapter(adapter, model)
    one, two = _fresh(adapter, ctx), _fresh(adapter, ctx)
    a, b = leaves.capture(one), leaves.capture(two)
    problems = Problems()
    names = sorted(set(a) ^ set(b))
    if names:
        problems.add(f"the two loads hold different tensors: {summarize(names)}")
    differ = [n for n in sorted(set(a) & set(b)) if not _same(a[n], b[n])]
    if differ:
        problems.add(f"{len(differ)} tensor(s) differ between two loads: {summarize(differ)}")
    if not torch.equal(state.bits(state.logits(one)), state.bits(state.logits(two))):
        problems.add("the two loads give different logits")
    problems.raise_if_any(f"Loading {ctx.model_path} twice must give the same model: a key the "
                          "checkpoint lacks or the backend drops is initialised at random; load "
                          "every weight (e.g. keep MoE experts out of the quantization) and seed "
                          "nothing")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(state.bits(a), state.bits(b))


CHECKS = (
    check_model_is_quantized,
    check_describe_reports_quantization,
    check_snapshot_before_first_forward,
    check_load_is_repeatable,
)
