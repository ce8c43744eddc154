"""How the reference adapters read a model's structure off its modules (the adapters' own code).

The conformance suite never uses this module: it derives its truth independently in
``pytest_invarlock.truth`` and checks what these functions report against it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

Stack = tuple[str, nn.ModuleList]

#: Layer lists, in the order a model's stacks are described (encoder before decoder).
STACK_PATHS: tuple[tuple[str, ...], ...] = (
    ("encoder.block", "decoder.block"), ("model.encoder.layers", "model.decoder.layers"),
    ("model.layers",), ("model.language_model.layers",), ("transformer.h",),
    ("gpt_neox.layers",), ("model.decoder.layers",),
    *((f"{p}encoder.layer",) for p in ("bert.", "roberta.", "electra.", "deberta.", "")),
    ("distilbert.transformer.layer",), ("transformer.layer",),
)
ALBERT_GROUPS = ("albert.encoder.albert_layer_groups", "encoder.albert_layer_groups")


def text_config(model: nn.Module) -> Any:
    """Return the language model's config (``get_text_config`` for multimodal models)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _module(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def stacks(model: nn.Module) -> list[Stack]:
    """Return the model's layer lists as ``(name, layers)`` pairs."""
    for paths in STACK_PATHS:
        found = [_module(model, p) for p in paths]
        if all(isinstance(f, nn.ModuleList) for f in found):
            return list(zip(paths, found, strict=True))  # type: ignore[arg-type]
    for path in ALBERT_GROUPS:
        groups = _module(model, path)
        if isinstance(groups, nn.ModuleList):
            shared = groups[0].albert_layers[0]
            count = text_config(model).num_hidden_layers
            return [(path, nn.ModuleList([shared] * count))]
    raise ValueError(f"{type(model).__name__}: no layer list at any known path")


def _linear_out(module: nn.Module) -> int:
    if hasattr(module, "out_features"):
        return int(module.out_features)
    return int(module.nf)  # transformers' Conv1D (GPT-2) keeps its output width in nf


#: (module-name suffix, width reader) in priority order; fused experts come first.
_MLP_READERS: tuple[tuple[str, Callable[[nn.Module], int]], ...] = (
    ("experts", lambda m: int(m.gate_up_proj.shape[1]) // 2),
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


def activation(config: Any, layer: nn.Module) -> str:
    """Return the MLP activation, named ``swiglu``/``geglu`` when the MLP is gated."""
    act = next(str(getattr(config, f)) for f in _ACT_FIELDS if getattr(config, f, None))
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
