"""Ground truth about a model, derived from its config, its parameter shapes and storage identity.

Adapters are never consulted here. Each family has a rule (data) saying which config fields hold
the counts and which parameter shapes must agree with them; a model whose family has no rule raises
:class:`TruthUnavailable`, so a gap in the suite is an error and never a silent pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pytest_invarlock.errors import TruthUnavailable
from pytest_invarlock.state import named_tensors, storage_groups, storage_key

Config = Any


@dataclass(frozen=True)
class Rule:
    """Where a family keeps its structure: config readers and per-layer parameter paths."""

    mlp_width: Callable[[Config], int]
    #: ``{i}``-templated parameter names and the weight dimension holding the width.
    q_weight: tuple[str, int] | None
    k_weight: tuple[str, int] | None
    mlp_up_weight: tuple[str, int]
    positional: str
    activations: Callable[[Config], frozenset[str]]
    normalization: str


def _llama_acts(c: Config) -> frozenset[str]:
    act = str(c.hidden_act)
    return frozenset({act, "swiglu"} if act in {"silu", "swish"} else {act, "geglu"})


def _gpt2_acts(c: Config) -> frozenset[str]:
    act = str(c.activation_function)
    return frozenset({act, act.split("_")[0]})


_LLAMA = Rule(
    mlp_width=lambda c: int(c.intermediate_size),
    q_weight=("model.layers.{i}.self_attn.q_proj.weight", 0),
    k_weight=("model.layers.{i}.self_attn.k_proj.weight", 0),
    mlp_up_weight=("model.layers.{i}.mlp.up_proj.weight", 0),
    positional="rope",
    activations=_llama_acts,
    normalization="rmsnorm",
)
RULES: dict[str, Rule] = {
    "gpt2": Rule(
        mlp_width=lambda c: int(c.n_inner or 4 * c.hidden_size),
        q_weight=None,  # fused c_attn: heads cannot be read off a shape
        k_weight=None,
        mlp_up_weight=("transformer.h.{i}.mlp.c_fc.weight", 1),  # Conv1D is (in, out)
        positional="learned",
        activations=_gpt2_acts,
        normalization="layernorm",
    ),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
}


@dataclass(frozen=True)
class Truth:
    """What a model really is, for comparison with an adapter's describe()."""

    model_type: str
    model_class: str
    device: str
    n_layer: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp_dims: tuple[int, ...]
    tied_groups: tuple[tuple[str, ...], ...]
    total_params: int
    attention_types: frozenset[str]
    normalization: str
    activations: frozenset[str]
    positional: str
    tie_word_embeddings: bool
    embedding_pair: tuple[str, str] | None

    @property
    def is_gqa(self) -> bool:
        """Return whether the model has fewer key/value heads than query heads."""
        return self.kv_heads != self.heads


def text_config(model: nn.Module) -> Config:
    """Return the language-model config of ``model`` (the config itself for text-only models)."""
    config = getattr(model, "config", None)
    if config is None:
        raise TruthUnavailable(f"{type(model).__name__} has no .config; the suite derives truth "
                               "from transformers configs")
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def rule_for(model_type: str) -> Rule:
    """Return the family rule for ``model_type`` or raise :class:`TruthUnavailable`."""
    try:
        return RULES[model_type]
    except KeyError:
        raise TruthUnavailable(f"the suite has no truth rule for model_type {model_type!r}; add "
                               "one to pytest_invarlock/truth.py RULES") from None


def derive(model: nn.Module) -> Truth:
    """Derive the truth about ``model`` from its config, parameter shapes and storage."""
    config = text_config(model)
    rule = rule_for(str(config.model_type))
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    n_layer = int(config.num_hidden_layers)
    shapes = {n: tuple(t.shape) for n, (t, _) in named_tensors(model).items()}
    _confirm(shapes, rule.q_weight, n_layer, heads * head_dim, "num_attention_heads x head_dim")
    _confirm(shapes, rule.k_weight, n_layer, kv * head_dim, "num_key_value_heads x head_dim")
    mlp = _per_layer(shapes, rule.mlp_up_weight, n_layer)
    if set(mlp) != {rule.mlp_width(config)}:
        raise TruthUnavailable(f"MLP widths {mlp} disagree with the config's "
                               f"{rule.mlp_width(config)}; the checkpoint does not match its config")
    return Truth(
        model_type=str(config.model_type),
        model_class=type(model).__name__,
        device=str(next(model.parameters()).device),
        n_layer=n_layer, heads=heads, kv_heads=kv, head_dim=head_dim, mlp_dims=tuple(mlp),
        tied_groups=_parameter_groups(model),
        total_params=_unique_numel(model),
        attention_types=_attention_types(heads, kv),
        normalization=rule.normalization,
        activations=rule.activations(config),
        positional=rule.positional,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        embedding_pair=_embedding_pair(model),
    )


def _per_layer(shapes: dict[str, tuple[int, ...]], where: tuple[str, int],
               n_layer: int) -> list[int]:
    template, dim = where
    widths = []
    for i in range(n_layer):
        name = template.format(i=i)
        if name not in shapes:
            raise TruthUnavailable(f"expected parameter {name!r} (layer {i} of {n_layer} per the "
                                   "config) is missing; the truth rule or the checkpoint is wrong")
        widths.append(shapes[name][dim])
    return widths


def _confirm(shapes: dict[str, tuple[int, ...]], where: tuple[str, int] | None, n_layer: int,
             expected: int, what: str) -> None:
    if where is None:
        return
    got = _per_layer(shapes, where, n_layer)
    if set(got) != {expected}:
        raise TruthUnavailable(f"{where[0]} widths {got} disagree with config {what} = "
                               f"{expected}; the checkpoint does not match its config")


def _attention_types(heads: int, kv: int) -> frozenset[str]:
    if kv == heads:
        return frozenset({"causal", "mha"})
    return frozenset({"mqa", "gqa"}) if kv == 1 else frozenset({"gqa"})


def _parameter_groups(model: nn.Module) -> tuple[tuple[str, ...], ...]:
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return tuple(g for g in storage_groups(model) if set(g) <= params)


def _unique_numel(model: nn.Module) -> int:
    seen: dict[tuple[object, ...], int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[storage_key(p)] = p.numel()
    return sum(seen.values())


def _embedding_pair(model: nn.Module) -> tuple[str, str] | None:
    """Return the parameter names of the input embedding and the LM head, found by identity."""
    try:
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if inp is None or out is None:
        return None
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    return f"{names[id(inp)]}.weight", f"{names[id(out)]}.weight"


def as_device(value: object) -> str:
    """Normalise a device description (``"cuda"`` and ``"cuda:0"`` compare equal on one GPU)."""
    device = torch.device(str(value))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)
