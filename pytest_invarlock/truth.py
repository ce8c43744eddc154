"""Ground truth about a model, derived from its config, its parameter shapes and storage identity.

Adapters are never consulted here. Each family has a rule (data) saying which config fields hold
the counts and which parameter shapes must agree with them; a model whose family has no rule, or
whose weights disagree with its config, raises :class:`TruthUnavailable`, so a gap in the suite is
an error and never a silent pass.
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
Shape = tuple[int, ...]
Reader = Callable[[Shape], int]
PerLayer = Callable[[Config, int], int]


def rows(shape: Shape) -> int:
    """Return the output width of a Linear weight ``(out, in)``."""
    return shape[0]


def cols(shape: Shape) -> int:
    """Return the output width of a transformers Conv1D weight ``(in, out)``."""
    return shape[1]


def half_rows(shape: Shape) -> int:
    """Return the width of a fused gate+up Linear weight ``(2 * width, in)``."""
    return shape[0] // 2


def expert_width(shape: Shape) -> int:
    """Return the per-expert width of fused experts ``(experts, 2 * width, hidden)``."""
    return shape[1] // 2


def _first(config: Config, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    raise TruthUnavailable(f"{type(config).__name__} has none of {names}")


@dataclass(frozen=True)
class Stack:
    """One list of transformer layers (a decoder, or the encoder / decoder of a seq2seq model)."""

    prefixes: tuple[str, ...]
    count: Callable[[Config], int]
    heads: Callable[[Config], int]
    kv_heads: Callable[[Config], int]
    #: Paths inside a layer and how to read a width off the weight's shape.
    q: tuple[str, Reader] | None = None
    k: tuple[str, Reader] | None = None
    qkv: tuple[str, Reader] | None = None
    mlp: tuple[tuple[str, Reader], ...] = ()
    mlp_config: PerLayer = lambda c, i: int(c.intermediate_size)
    #: One set of weights serves every layer (ALBERT): always read layer 0.
    shared: bool = False


@dataclass(frozen=True)
class Rule:
    """Everything the suite knows about one family."""

    stacks: tuple[Stack, ...]
    attention: str
    normalization: str
    positional: str
    gated: Callable[[Config], bool] = lambda c: False
    head_dim: Callable[[Config], int] = lambda c: int(
        getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
    #: (expert weight path inside a layer, expert count, experts per token) for MoE families.
    experts: tuple[str, Callable[[Config], int], Callable[[Config], int]] | None = None
    #: Overrides ``positional`` where the config decides (e.g. DeBERTa's relative_attention).
    positional_of: Callable[[Config], str] | None = None


def _heads(c: Config) -> int:
    return int(c.num_attention_heads)


def _kv(c: Config) -> int:
    return int(getattr(c, "num_key_value_heads", None) or c.num_attention_heads)


def _layers(c: Config) -> int:
    return int(c.num_hidden_layers)


def _qwen3_moe_width(c: Config, i: int) -> int:
    dense = i in (c.mlp_only_layers or []) or not c.num_experts or (i + 1) % c.decoder_sparse_step
    return int(c.intermediate_size if dense else c.moe_intermediate_size)


_DECODER_PREFIXES = ("model.layers", "model.language_model.layers", "language_model.model.layers")
_QK = {"q": ("self_attn.q_proj.weight", rows), "k": ("self_attn.k_proj.weight", rows)}
_GATED_MLP = (("mlp.up_proj.weight", rows), ("mlp.experts.gate_up_proj", expert_width))


def _llama_like(mlp_config: PerLayer | None = None, experts: tuple[Any, ...] | None = None,
                gated: bool = True) -> Rule:
    stack = Stack(_DECODER_PREFIXES, _layers, _heads, _kv, mlp=_GATED_MLP, **_QK,
                  **({"mlp_config": mlp_config} if mlp_config else {}))
    return Rule((stack,), "causal", "rmsnorm", "rope", gated=lambda c: gated, experts=experts)


_EXPERTS = "mlp.experts.gate_up_proj"
_BERT_PREFIXES = tuple(f"{p}encoder.layer" for p in ("bert.", "roberta.", "electra.", ""))
_BERT_STACK = Stack(_BERT_PREFIXES, _layers, _heads, _heads,
                    q=("attention.self.query.weight", rows), k=("attention.self.key.weight", rows),
                    mlp=(("intermediate.dense.weight", rows),))
_BERT = Rule((_BERT_STACK,), "bidirectional", "layernorm", "learned")


def _falcon_kv(c: Config) -> int:
    if c.new_decoder_architecture:
        return int(c.num_kv_heads)
    return 1 if c.multi_query else int(c.num_attention_heads)


def _t5_stack(prefix: str, count: Callable[[Config], int], ff: int) -> Stack:
    return Stack((prefix,), count, lambda c: int(c.num_heads), lambda c: int(c.num_heads),
                 q=("layer.0.SelfAttention.q.weight", rows),
                 k=("layer.0.SelfAttention.k.weight", rows),
                 mlp=((f"layer.{ff}.DenseReluDense.wi.weight", rows),
                      (f"layer.{ff}.DenseReluDense.wi_0.weight", rows)),
                 mlp_config=lambda c, i: int(c.d_ff))


def _bart_stack(side: str) -> Stack:
    return Stack((f"model.{side}.layers",), lambda c: int(getattr(c, f"{side}_layers")),
                 lambda c: int(getattr(c, f"{side}_attention_heads")),
                 lambda c: int(getattr(c, f"{side}_attention_heads")), **_QK,
                 mlp=(("fc1.weight", rows),),
                 mlp_config=lambda c, i: int(getattr(c, f"{side}_ffn_dim")))


RULES: dict[str, Rule] = {
    "gpt2": Rule((Stack(("transformer.h",), _layers, _heads, _heads,
                        qkv=("attn.c_attn.weight", cols), mlp=(("mlp.c_fc.weight", cols),),
                        mlp_config=lambda c, i: int(c.n_inner or 4 * c.hidden_size)),),
                 "causal", "layernorm", "learned"),
    "llama": _llama_like(),
    "mistral": _llama_like(),
    "qwen2": _llama_like(),
    "qwen3": _llama_like(),
    "gemma": _llama_like(),
    "gemma3_text": _llama_like(),
    "mixtral": _llama_like(experts=(_EXPERTS, lambda c: int(c.num_local_experts),
                                    lambda c: int(c.num_experts_per_tok))),
    "olmoe": _llama_like(experts=(_EXPERTS, lambda c: int(c.num_experts),
                                  lambda c: int(c.num_experts_per_tok))),
    "qwen3_moe": _llama_like(_qwen3_moe_width, (_EXPERTS, lambda c: int(c.num_experts),
                                                lambda c: int(c.num_experts_per_tok))),
    "phi3": Rule((Stack(_DECODER_PREFIXES, _layers, _heads, _kv,
                        qkv=("self_attn.qkv_proj.weight", rows),
                        mlp=(("mlp.gate_up_proj.weight", half_rows),)),),
                 "causal", "rmsnorm", "rope", gated=lambda c: True),
    "opt": Rule((Stack(("model.decoder.layers",), _layers, _heads, _heads, **_QK,
                       mlp=(("fc1.weight", rows),), mlp_config=lambda c, i: int(c.ffn_dim)),),
                "causal", "layernorm", "learned"),
    "gpt_neox": Rule((Stack(("gpt_neox.layers",), _layers, _heads, _heads,
                            qkv=("attention.query_key_value.weight", rows),
                            mlp=(("mlp.dense_h_to_4h.weight", rows),)),),
                     "causal", "layernorm", "rope"),
    "falcon": Rule((Stack(("transformer.h",), _layers, _heads, _falcon_kv,
                          qkv=("self_attention.query_key_value.weight", rows),
                          mlp=(("mlp.dense_h_to_4h.weight", rows),),
                          mlp_config=lambda c, i: int(c.ffn_hidden_size or 4 * c.hidden_size)),),
                   "causal", "layernorm", "rope"),
    "bert": _BERT,
    "roberta": _BERT,
    "electra": _BERT,
    "deberta-v2": Rule((Stack(("deberta.encoder.layer", "encoder.layer"), _layers, _heads, _heads,
                              q=("attention.self.query_proj.weight", rows),
                              k=("attention.self.key_proj.weight", rows),
                              mlp=(("intermediate.dense.weight", rows),)),),
                       "bidirectional", "layernorm", "learned",
                       positional_of=lambda c: "relative" if c.relative_attention else "learned"),
    "distilbert": Rule((Stack(("distilbert.transformer.layer", "transformer.layer"), _layers,
                              _heads, _heads, q=("attention.q_lin.weight", rows),
                              k=("attention.k_lin.weight", rows), mlp=(("ffn.lin1.weight", rows),),
                              mlp_config=lambda c, i: int(c.hidden_dim)),),
                       "bidirectional", "layernorm", "learned"),
    "albert": Rule((Stack(("albert.encoder.albert_layer_groups.0.albert_layers",
                           "encoder.albert_layer_groups.0.albert_layers"), _layers, _heads, _heads,
                          q=("attention.query.weight", rows), k=("attention.key.weight", rows),
                          mlp=(("ffn.weight", rows),), shared=True),),
                   "bidirectional", "layernorm", "learned"),
    "t5": Rule((_t5_stack("encoder.block", lambda c: int(c.num_layers), 1),
                _t5_stack("decoder.block", lambda c: int(c.num_decoder_layers), 2)),
               "encoder-decoder", "rmsnorm", "relative",
               gated=lambda c: bool(c.is_gated_act), head_dim=lambda c: int(c.d_kv)),
    "bart": Rule((_bart_stack("encoder"), _bart_stack("decoder")), "encoder-decoder",
                 "layernorm", "learned", head_dim=lambda c: int(c.d_model // c.encoder_attention_heads)),
}


@dataclass(frozen=True)
class Truth:
    """What a model really is, for comparison with an adapter's describe()."""

    model_type: str
    model_class: str
    device: str
    n_layer: int
    heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    head_dim: int
    mlp_dims: tuple[int, ...]
    experts: int | None
    experts_per_token: int | None
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
        return any(kv != h for kv, h in zip(self.kv_heads, self.heads, strict=True))


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


@dataclass(frozen=True)
class _StackTruth:
    heads: list[int]
    kv: list[int]
    mlp: list[int]
    experts: list[int]


def _stack_truth(stack: Stack, config: Config, shapes: dict[str, Shape],
                 head_dim: int, experts_path: str | None) -> _StackTruth:
    n = stack.count(config)
    prefix = _prefix(stack, shapes)
    heads, kv = stack.heads(config), stack.kv_heads(config)
    out = _StackTruth([heads] * n, [kv] * n, [], [])
    for i in range(n):
        layer = f"{prefix}.{0 if stack.shared else i}."
        _confirm(shapes, layer, stack.q, heads * head_dim, "heads x head_dim")
        _confirm(shapes, layer, stack.k, kv * head_dim, "K/V heads x head_dim")
        _confirm(shapes, layer, stack.qkv, (heads + 2 * kv) * head_dim,
                 "(heads + 2 x K/V heads) x head_dim")
        width = _mlp_width(shapes, layer, stack)
        if width != stack.mlp_config(config, i):
            raise TruthUnavailable(f"layer {layer[:-1]} has MLP width {width} but the config says "
                                   f"{stack.mlp_config(config, i)}; checkpoint and config disagree")
        out.mlp.append(width)
        if experts_path and layer + experts_path in shapes:
            out.experts.append(shapes[layer + experts_path][0])
    return out


def _prefix(stack: Stack, shapes: dict[str, Shape]) -> str:
    for prefix in stack.prefixes:
        if any(name.startswith(f"{prefix}.0.") for name in shapes):
            return prefix
    raise TruthUnavailable(f"no layer list at any of {stack.prefixes}; the truth rule or the "
                           "model is not what the suite expects")


def _confirm(shapes: dict[str, Shape], layer: str, where: tuple[str, Reader] | None,
             expected: int, what: str) -> None:
    if where is None:
        return
    name = layer + where[0]
    if name not in shapes:
        raise TruthUnavailable(f"expected parameter {name!r} is missing")
    if where[1](shapes[name]) != expected:
        raise TruthUnavailable(f"{name} has width {where[1](shapes[name])}, the config's {what} "
                               f"is {expected}; checkpoint and config disagree")


def _mlp_width(shapes: dict[str, Shape], layer: str, stack: Stack) -> int:
    for path, reader in stack.mlp:
        if layer + path in shapes:
            return reader(shapes[layer + path])
    raise TruthUnavailable(f"no MLP weight in {layer[:-1]} at any of {[p for p, _ in stack.mlp]}")


def derive(model: nn.Module) -> Truth:
    """Derive the truth about ``model`` from its config, parameter shapes and storage."""
    config = text_config(model)
    rule = rule_for(str(config.model_type))
    shapes = {n: tuple(t.shape) for n, (t, _) in named_tensors(model).items()}
    head_dim = rule.head_dim(config)
    stacks = [_stack_truth(s, config, shapes, head_dim, rule.experts and rule.experts[0])
              for s in rule.stacks]
    experts, per_token = _experts(rule, config, [e for s in stacks for e in s.experts])
    heads = tuple(h for s in stacks for h in s.heads)
    kv = tuple(k for s in stacks for k in s.kv)
    return Truth(
        model_type=str(model.config.model_type),
        model_class=type(model).__name__,
        device=str(next(model.parameters()).device),
        n_layer=len(heads), heads=heads, kv_heads=kv, head_dim=head_dim,
        mlp_dims=tuple(m for s in stacks for m in s.mlp),
        experts=experts, experts_per_token=per_token,
        tied_groups=_parameter_groups(model),
        total_params=_unique_numel(model),
        attention_types=_attention_types(rule.attention, heads[0], kv[0]),
        normalization=rule.normalization,
        activations=_activations(config, rule.gated(config)),
        positional=_positional(rule, config),
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        embedding_pair=_embedding_pair(model),
    )


def _positional(rule: Rule, config: Config) -> str:
    if getattr(config, "alibi", False):
        return "alibi"
    return rule.positional_of(config) if rule.positional_of else rule.positional


def _experts(rule: Rule, config: Config, found: list[int]) -> tuple[int | None, int | None]:
    if rule.experts is None:
        return None, None
    _, count, per_token = rule.experts
    if not found or set(found) != {count(config)}:
        raise TruthUnavailable(f"expert weights hold {sorted(set(found))} experts, the config "
                               f"says {count(config)}; checkpoint and config disagree")
    return count(config), per_token(config)


def _attention_types(kind: str, heads: int, kv: int) -> frozenset[str]:
    if kind != "causal":
        return frozenset({kind})
    if kv == heads:
        return frozenset({"causal", "mha"})
    return frozenset({"mqa", "gqa"}) if kv == 1 else frozenset({"gqa"})


_ACT_FIELDS = ("hidden_activation", "hidden_act", "activation_function", "activation",
               "dense_act_fn")


def _activations(config: Config, gated: bool) -> frozenset[str]:
    act = str(_first(config, *_ACT_FIELDS))
    names = {act, act.split("_")[0]}
    if gated:
        names.add("swiglu" if act in {"silu", "swish"} else "geglu")
    return frozenset(names)


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
