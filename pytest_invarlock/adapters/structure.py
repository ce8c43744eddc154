"""How the reference adapters read a model's structure off its modules (the adapters' own code).

The conformance suite never uses this module: it derives its truth independently in
``pytest_invarlock.hf_adapter.truth`` and checks what these functions report against it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

Stack = tuple[str, nn.ModuleList]

#: Layer lists inside a base model, in the order a model's stacks are described (encoder before
#: decoder); a model holding one stack of an encoder-decoder family matches a one-path entry.
STACK_PATHS: tuple[tuple[str, ...], ...] = (
    ("encoder.block", "decoder.block"), ("encoder.layers", "decoder.layers"),
    ("layers",), ("h",), ("decoder.layers",), ("encoder.layer",), ("transformer.layer",),
    ("decoder.block",), ("encoder.block",), ("encoder.layers",),
)
ALBERT_GROUPS = "encoder.albert_layer_groups"
#: Attributes that lead from a model to the module holding its layers (after base_model_prefix).
INNER_MODELS = ("language_model",)


def text_config(model: nn.Module) -> Any:
    """Return the language model's config (``get_text_config`` for multimodal models)."""
    config: Any = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def model_type_of(model: nn.Module) -> str:
    """Return the whole model's ``config.model_type`` (not the text config's)."""
    config: Any = model.config
    return str(config.model_type)


def _module(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def base_paths(model: nn.Module) -> list[str]:
    """Return the model, then its base model, then the language model inside it, as path prefixes.

    Follows ``base_model_prefix`` (``transformer``, ``model``, ``bert`` ...) and then
    ``language_model`` while they lead to a module not seen yet, so a task head, a causal-LM
    wrapper and a multimodal model all lead to the module that holds the layer lists.
    """
    prefixes, module, prefix, seen = [""], model, "", {id(model)}
    while True:
        for attr in (str(getattr(module, "base_model_prefix", "") or ""), *INNER_MODELS):
            child = getattr(module, attr, None) if attr else None
            if isinstance(child, nn.Module) and id(child) not in seen:
                break
        else:
            return prefixes
        seen.add(id(child))
        module, prefix = child, f"{prefix}{attr}."
        prefixes.append(prefix)


def stacks(model: nn.Module) -> list[Stack]:
    """Return the model's layer lists as ``(name, layers)`` pairs."""
    for base in base_paths(model):
        for paths in STACK_PATHS:
            found = [_module(model, base + p) for p in paths]
            lists = [f for f in found if isinstance(f, nn.ModuleList) and len(f)]
            if len(lists) == len(paths):
                return [(base + p, f) for p, f in zip(paths, lists, strict=True)]
        groups = _module(model, base + ALBERT_GROUPS)
        if isinstance(groups, nn.ModuleList):
            shared = cast(nn.ModuleList, groups[0].albert_layers)[0]
            count = text_config(model).num_hidden_layers
            return [(base + ALBERT_GROUPS, nn.ModuleList([shared] * count))]
    raise ValueError(f"{type(model).__name__}: no layer list at any known path")


def _linear_out(module: nn.Module) -> int:
    found: Any = module  # widths are plain int attributes, read by name
    if hasattr(found, "out_features"):
        return int(found.out_features)
    return int(found.nf)  # transformers' Conv1D (GPT-2) keeps its output width in nf


def _expert_width(module: nn.Module) -> int:
    return int(cast(torch.Tensor, module.gate_up_proj).shape[1]) // 2


#: (module-name suffix, width reader) in priority order; fused experts come first.
_MLP_READERS: tuple[tuple[str, Callable[[nn.Module], int]], ...] = (
    ("experts", _expert_width),
    ("gate_up_proj", lambda m: _linear_out(m) // 2),
    ("up_proj", _linear_out), ("c_fc", _linear_out), ("fc1", _linear_out),
    ("dense_h_to_4h", _linear_out), ("intermediate.dense", _linear_out), ("lin1", _linear_out),
    ("wi", _linear_out), ("wi_0", _linear_out), ("ffn", _linear_out),
)


def mlp_width(layer: nn.Module) -> int:
    """Return the hidden width of a layer's MLP (per expert for mixture-of-experts layers)."""
    modules = dict(layer.named_modules())
    for suffix, read in _MLP_READERS:
        for name, module in modules.items():
            if (name == suffix or name.endswith("." + suffix)) and _readable(module, suffix):
                return read(module)
    raise ValueError(f"{type(layer).__name__}: no MLP projection among {_MLP_READERS}")


def _readable(module: nn.Module, suffix: str) -> bool:
    if suffix == "experts":
        return getattr(module, "gate_up_proj", None) is not None
    return hasattr(module, "out_features") or hasattr(module, "nf")


def experts(model: nn.Module) -> int | None:
    """Return the expert count of the first mixture-of-experts layer, if any."""
    for module in model.modules():
        weight = getattr(module, "gate_up_proj", None)
        if isinstance(weight, nn.Parameter) and weight.dim() == 3:
            return int(weight.shape[0])
    return None


def head_counts(config: Any, stack: str) -> tuple[int, int]:
    """Return (query heads, key/value heads) of one stack from the config."""
    side = "decoder" if "decoder" in stack else "encoder"
    for name in (f"{side}_attention_heads", "num_heads", "num_attention_heads"):
        if getattr(config, name, None):
            heads = int(getattr(config, name))
            break
    if getattr(config, "new_decoder_architecture", False):  # Falcon 40B style
        return heads, int(config.num_kv_heads)
    if getattr(config, "multi_query", False):
        return heads, 1
    return heads, int(getattr(config, "num_key_value_heads", None) or heads)


def causal(layer: nn.Module) -> bool:
    """Return whether a layer's self-attention masks future tokens (its ``is_causal`` flag)."""
    return any(vars(module).get("is_causal") is True for module in layer.modules())


def layer_type(layer: nn.Module) -> tuple[str, int | None] | None:
    """Return the attention kind of a layer and its window, as its attention module records them.

    transformers' attention modules of families with ``config.layer_types`` keep ``layer_type``
    (``full_attention``, ``sliding_attention``) and ``sliding_window``; None when none does.
    """
    for module in layer.modules():
        kind = vars(module).get("layer_type")
        if isinstance(kind, str):
            window = vars(module).get("sliding_window")
            return kind, int(window) if isinstance(window, int) else None
    return None


def layer_types(layers: list[nn.Module]) -> tuple[list[str], int | None] | None:
    """Return every layer's attention kind and the sliding window (None: layers record none)."""
    found = [layer_type(layer) for layer in layers]
    known = [f for f in found if f is not None]
    if not known:
        return None
    if len(known) != len(found):
        missing = [i for i, f in enumerate(found) if f is None]
        raise ValueError(f"layers {missing} record no attention kind, the others do")
    windows = {window for kind, window in known if kind == "sliding_attention"}
    if len(windows) > 1:
        raise ValueError(f"sliding layers use different windows {windows}")
    return [kind for kind, _ in known], next(iter(windows), None)


def head_dim(config: Any, heads: int) -> int:
    """Return the per-head width."""
    return int(getattr(config, "head_dim", None) or getattr(config, "d_kv", None)
               or config.hidden_size // heads)


def tying(model: nn.Module) -> dict[str, str]:
    """Map every tied parameter name to the first name of the same Parameter object."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        tied_to = first.setdefault(id(param), name)
        if tied_to != name:
            tied[name] = tied_to
    return tied


_GATED = {"silu": "swiglu", "swish": "swiglu"}
_ACT_FIELDS = ("hidden_activation", "hidden_act", "activation_function", "activation",
               "dense_act_fn")


_ACT_MODULES = (("gelu", "gelu"), ("silu", "silu"), ("swish", "silu"), ("relu", "relu"))


def activation(config: Any, layer: nn.Module) -> str | None:
    """Return the MLP activation, named ``swiglu``/``geglu`` when the MLP is gated.

    The config names it in most families; otherwise (BLOOM) the activation module's class does.
    None when neither says.
    """
    act = next((str(getattr(config, f)) for f in _ACT_FIELDS if getattr(config, f, None)), None)
    if act is None:
        kinds = [type(m).__name__.lower() for m in layer.modules()]
        act = next((name for key, name in _ACT_MODULES for k in kinds if key in k), None)
        if act is None:
            return None
    names = {n.rpartition(".")[2] for n, _ in layer.named_modules()}
    params = {n.rpartition(".")[2] for n, _ in layer.named_parameters()}
    gated = bool({"gate_proj", "gate_up_proj", "wi_0"} & (names | params))
    if not gated:
        return act
    return _GATED.get(act, "geglu" if act.startswith("gelu") else act)


def normalization(model: nn.Module) -> str:
    """Return ``rmsnorm`` when the model's norms are RMS norms (T5's LayerNorm is one)."""
    kinds = {type(m).__name__ for m in model.modules()}
    rms = any("RMSNorm" in k for k in kinds) or "T5LayerNorm" in kinds
    return "rmsnorm" if rms else "layernorm"


def positional(model: nn.Module, config: Any) -> str:
    """Return how positions are encoded: rope, alibi, relative or learned."""
    if getattr(config, "alibi", False):
        return "alibi"
    names = {n for n, _ in model.named_modules()} | {n for n, _ in model.named_parameters()}
    if any("rotary" in n for n in names):
        return "rope"
    if any("relative_attention_bias" in n or "rel_embeddings" in n for n in names):
        return "relative"
    return "learned"
