"""Ground truth about a model, derived from its config, its parameter shapes and storage identity.

Adapters are never consulted here. Each family has a rule (data) saying which config fields hold
the counts, where its layer lists live inside the family's base model and which parameter shapes
must agree with them; a model whose family has no rule, or whose weights disagree with its config,
raises :class:`TruthUnavailable`, so a gap in the suite is an error and never a silent pass.

Layer lists are located the same way for every class a family loads as (base model, causal or
masked LM head, task heads, the language model inside a multimodal model): a rule names each list
by its path inside the family's base model, and the suite looks for it under every transformers
model of that family in the module tree. Encoder-decoder families tag their lists ``encoder`` /
``decoder``; a model holding one of them only (``BartForCausalLM``, ``T5EncoderModel``) is
described by that one, while a model whose config says it is an encoder-decoder must hold both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from pytest_invarlock.errors import ModelInconsistent, TruthUnavailable
from pytest_invarlock.hf_adapter.state import named_tensors, storage_groups, storage_key

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


def per_layer(value: Any, i: int) -> int:
    """Return layer ``i``'s entry of a config field that is one int or one int per layer."""
    if isinstance(value, (list, tuple)):
        return int(value[i])
    return int(value)


def _intermediate(c: Config, i: int) -> int:
    return per_layer(c.intermediate_size, i)


def _always(c: Config, i: int) -> bool:
    return True


@dataclass(frozen=True)
class Stack:
    """One list of transformer layers (a decoder, or the encoder / decoder of a seq2seq model)."""

    #: Where the list lives inside the family's base model (``layers``, ``h``, ``encoder.layer``).
    path: str
    count: Callable[[Config], int]
    heads: Callable[[Config], int]
    kv_heads: Callable[[Config], int]
    #: Paths inside a layer and how to read a width off the weight's shape.
    q: tuple[str, Reader] | None = None
    k: tuple[str, Reader] | None = None
    qkv: tuple[str, Reader] | None = None
    mlp: tuple[tuple[str, Reader], ...] = ()
    mlp_config: PerLayer = _intermediate
    #: One set of weights serves every layer (ALBERT): always read layer 0.
    shared: bool = False
    #: ``encoder`` or ``decoder`` in encoder-decoder families; None for a family's only stack.
    side: str | None = None
    #: Per-head width of this stack when it differs from the rule's (BART's decoder heads).
    head_dim: Callable[[Config], int] | None = None
    #: Whether layer ``i`` has K/V projections of its own (False: it reuses an earlier layer's).
    own_kv: Callable[[Config, int], bool] = _always


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
    #: Overrides ``attention`` where the config decides (a BERT configured as a decoder).
    attention_of: Callable[[Config], str] | None = None
    #: The family's modeling code honours ``config.layer_types`` (per-layer full/sliding).
    layer_types: bool = False


def _heads(c: Config) -> int:
    return int(c.num_attention_heads)


def _kv(c: Config) -> int:
    return int(getattr(c, "num_key_value_heads", None) or c.num_attention_heads)


def _layers(c: Config) -> int:
    return int(c.num_hidden_layers)


def _qwen3_moe_width(c: Config, i: int) -> int:
    dense = i in (c.mlp_only_layers or []) or not c.num_experts or (i + 1) % c.decoder_sparse_step
    return per_layer(c.intermediate_size if dense else c.moe_intermediate_size, i)


def _gemma3n_own_kv(c: Config, i: int) -> bool:
    return i < int(c.num_hidden_layers) - int(c.num_kv_shared_layers or 0)


_QK: dict[str, Any] = {"q": ("self_attn.q_proj.weight", rows),
                       "k": ("self_attn.k_proj.weight", rows)}
_GATED_MLP = (("mlp.up_proj.weight", rows), ("mlp.experts.gate_up_proj", expert_width))


def _llama_like(mlp_config: PerLayer = _intermediate, experts: tuple[Any, ...] | None = None,
                gated: bool = True, layer_types: bool = False,
                own_kv: Callable[[Config, int], bool] = _always) -> Rule:
    stack = Stack("layers", _layers, _heads, _kv, mlp=_GATED_MLP, mlp_config=mlp_config,
                  own_kv=own_kv, **_QK)
    return Rule((stack,), "causal", "rmsnorm", "rope", gated=lambda c: gated, experts=experts,
                layer_types=layer_types)


_EXPERTS = "mlp.experts.gate_up_proj"
_BERT_STACK = Stack("encoder.layer", _layers, _heads, _heads,
                    q=("attention.self.query.weight", rows), k=("attention.self.key.weight", rows),
                    mlp=(("intermediate.dense.weight", rows),))


def _bert_attention(c: Config) -> str:
    """BERT-family self-attention is causal only when the config makes the model a decoder."""
    return "causal" if getattr(c, "is_decoder", False) else "bidirectional"


_BERT = Rule((_BERT_STACK,), "bidirectional", "layernorm", "learned", attention_of=_bert_attention)


def _falcon_kv(c: Config) -> int:
    if c.new_decoder_architecture:
        return int(c.num_kv_heads)
    return 1 if c.multi_query else int(c.num_attention_heads)


def _t5_stack(side: str, count: Callable[[Config], int], ff: int) -> Stack:
    return Stack(f"{side}.block", count, lambda c: int(c.num_heads), lambda c: int(c.num_heads),
                 q=("layer.0.SelfAttention.q.weight", rows),
                 k=("layer.0.SelfAttention.k.weight", rows),
                 mlp=((f"layer.{ff}.DenseReluDense.wi.weight", rows),
                      (f"layer.{ff}.DenseReluDense.wi_0.weight", rows)),
                 mlp_config=lambda c, i: int(c.d_ff), side=side)


def _bart_stack(side: str) -> Stack:
    def heads(c: Config) -> int:
        return int(getattr(c, f"{side}_attention_heads"))

    return Stack(f"{side}.layers", lambda c: int(getattr(c, f"{side}_layers")), heads, heads,
                 **_QK, mlp=(("fc1.weight", rows),),
                 mlp_config=lambda c, i: int(getattr(c, f"{side}_ffn_dim")), side=side,
                 head_dim=lambda c: int(c.d_model) // heads(c))


RULES: dict[str, Rule] = {
    "gpt2": Rule((Stack("h", _layers, _heads, _heads,
                        qkv=("attn.c_attn.weight", cols), mlp=(("mlp.c_fc.weight", cols),),
                        mlp_config=lambda c, i: int(c.n_inner or 4 * c.hidden_size)),),
                 "causal", "layernorm", "learned"),
    "llama": _llama_like(),
    "mistral": _llama_like(),
    "qwen2": _llama_like(layer_types=True),
    "qwen3": _llama_like(layer_types=True),
    "gemma": _llama_like(),
    "gemma3_text": _llama_like(layer_types=True),
    "gemma3n_text": _llama_like(layer_types=True, own_kv=_gemma3n_own_kv),
    "mixtral": _llama_like(experts=(_EXPERTS, lambda c: int(c.num_local_experts),
                                    lambda c: int(c.num_experts_per_tok))),
    "olmoe": _llama_like(experts=(_EXPERTS, lambda c: int(c.num_experts),
                                  lambda c: int(c.num_experts_per_tok))),
    "qwen3_moe": _llama_like(_qwen3_moe_width, (_EXPERTS, lambda c: int(c.num_experts),
                                                lambda c: int(c.num_experts_per_tok))),
    "phi3": Rule((Stack("layers", _layers, _heads, _kv,
                        qkv=("self_attn.qkv_proj.weight", rows),
                        mlp=(("mlp.gate_up_proj.weight", half_rows),)),),
                 "causal", "rmsnorm", "rope", gated=lambda c: True),
    "opt": Rule((Stack("decoder.layers", _layers, _heads, _heads, **_QK,
                       mlp=(("fc1.weight", rows),), mlp_config=lambda c, i: int(c.ffn_dim)),),
                "causal", "layernorm", "learned"),
    "gpt_neox": Rule((Stack("layers", _layers, _heads, _heads,
                            qkv=("attention.query_key_value.weight", rows),
                            mlp=(("mlp.dense_h_to_4h.weight", rows),)),),
                     "causal", "layernorm", "rope"),
    "falcon": Rule((Stack("h", _layers, _heads, _falcon_kv,
                          qkv=("self_attention.query_key_value.weight", rows),
                          mlp=(("mlp.dense_h_to_4h.weight", rows),),
                          mlp_config=lambda c, i: int(c.ffn_hidden_size or 4 * c.hidden_size)),),
                   "causal", "layernorm", "rope"),
    "bert": _BERT,
    "roberta": _BERT,
    "electra": _BERT,
    "deberta-v2": Rule((Stack("encoder.layer", _layers, _heads, _heads,
                              q=("attention.self.query_proj.weight", rows),
                              k=("attention.self.key_proj.weight", rows),
                              mlp=(("intermediate.dense.weight", rows),)),),
                       "bidirectional", "layernorm", "learned",
                       positional_of=lambda c: "relative" if c.relative_attention else "learned"),
    "distilbert": Rule((Stack("transformer.layer", _layers, _heads, _heads,
                              q=("attention.q_lin.weight", rows),
                              k=("attention.k_lin.weight", rows), mlp=(("ffn.lin1.weight", rows),),
                              mlp_config=lambda c, i: int(c.hidden_dim)),),
                       "bidirectional", "layernorm", "learned"),
    "albert": Rule((Stack("encoder.albert_layer_groups.0.albert_layers", _layers, _heads, _heads,
                          q=("attention.query.weight", rows), k=("attention.key.weight", rows),
                          mlp=(("ffn.weight", rows),), shared=True),),
                   "bidirectional", "layernorm", "learned"),
    "t5": Rule((_t5_stack("encoder", lambda c: int(c.num_layers), 1),
                _t5_stack("decoder", lambda c: int(c.num_decoder_layers), 2)),
               "encoder-decoder", "rmsnorm", "relative",
               gated=lambda c: bool(c.is_gated_act), head_dim=lambda c: int(c.d_kv)),
    "bart": Rule((_bart_stack("encoder"), _bart_stack("decoder")), "encoder-decoder",
                 "layernorm", "learned",
                 head_dim=lambda c: int(c.d_model // c.encoder_attention_heads)),
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
    #: The layer lists the model holds, as full module paths, in describe() order.
    stacks: tuple[str, ...] = ()
    #: Per-layer attention kind (``full_attention``/``sliding_attention``) where the family
    #: honours ``config.layer_types``; None otherwise.
    layer_types: tuple[str, ...] | None = None
    #: The sliding window of the ``sliding_attention`` layers (None: no sliding layer).
    sliding_window: int | None = None

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


def model_type_of(model: nn.Module) -> str:
    """Return the whole model's ``config.model_type`` (not the text config's)."""
    config: Config = model.config
    return str(config.model_type)


def rule_for(model_type: str) -> Rule:
    """Return the family rule for ``model_type`` or raise :class:`TruthUnavailable`."""
    try:
        return RULES[model_type]
    except KeyError:
        raise TruthUnavailable(f"the suite has no truth rule for model_type {model_type!r}; add "
                               "one to pytest_invarlock/hf_adapter/truth.py RULES") from None


def family_roots(model: nn.Module, family: str) -> list[str]:
    """Return the module paths of every transformers model of ``family`` in ``model``'s tree.

    These are where a family's layer lists can hang: the model itself, its base model
    (``base_model_prefix``), the wrapper of a decoder-only variant, the language model inside a
    multimodal model. Only modules carrying transformers' ``base_model_prefix`` and a config of
    the family count; with none (a bare module), the model itself is the only root.
    """
    roots = [name for name, module in model.named_modules()
             if hasattr(module, "base_model_prefix")
             and getattr(getattr(module, "config", None), "model_type", None) == family]
    return roots or [""]


def _join(root: str, path: str) -> str:
    return f"{root}.{path}" if root else path


def _holds(shapes: dict[str, Shape], prefix: str) -> bool:
    return any(name.startswith(prefix) for name in shapes)


def _locate(stack: Stack, shapes: dict[str, Shape], roots: list[str]) -> str | None:
    """Return the full path of ``stack``'s layer list, None when the model does not hold it."""
    found = [p for p in (_join(r, stack.path) for r in roots) if _holds(shapes, f"{p}.0.")]
    if len(found) > 1:
        raise TruthUnavailable(f"layer lists at {found} all match {stack.path!r}; the suite cannot "
                               "tell which one the model's config describes")
    return found[0] if found else None


def _where(stack: Stack, roots: list[str]) -> list[str]:
    return [_join(r, stack.path) for r in roots]


def _present(rule: Rule, config: Config, shapes: dict[str, Shape],
             roots: list[str]) -> list[tuple[Stack, str]]:
    """Return the rule's stacks that the model holds, with their paths, in describe() order.

    An untagged stack must be there. Of an encoder-decoder family's stacks, a model whose config
    says ``is_encoder_decoder`` must hold all; any other model uses those it holds (at least one).
    """
    located = [(s, _locate(s, shapes, roots)) for s in rule.stacks]
    for stack, path in located:
        if path is None and stack.side is None:
            raise TruthUnavailable(f"no layer list at any of {_where(stack, roots)}; the truth rule "
                                   "or the model is not what the suite expects")
    sided = [(s, p) for s, p in located if s.side is not None]
    missing = [s for s, p in sided if p is None]
    if missing and getattr(config, "is_encoder_decoder", False):
        raise TruthUnavailable(
            f"config.is_encoder_decoder is True but {type(config).__name__}'s model holds no "
            f"{missing[0].side} layers at any of {_where(missing[0], roots)}; an encoder-decoder "
            "must hold both stacks")
    if sided and len(missing) == len(sided):
        raise TruthUnavailable(f"no encoder or decoder layer list at any of "
                               f"{[w for s in missing for w in _where(s, roots)]}")
    return [(s, p) for s, p in located if p is not None]


@dataclass(frozen=True)
class _StackTruth:
    heads: list[int]
    kv: list[int]
    mlp: list[int]
    experts: list[int]


def _stack_truth(stack: Stack, prefix: str, config: Config, shapes: dict[str, Shape],
                 head_dim: int, experts_path: str | None) -> _StackTruth:
    n = stack.count(config)
    heads, kv = stack.heads(config), stack.kv_heads(config)
    out = _StackTruth([heads] * n, [kv] * n, [], [])
    for i in range(n):
        layer = f"{prefix}.{0 if stack.shared else i}."
        _confirm(shapes, layer, stack.q, heads * head_dim, "heads x head_dim")
        if stack.own_kv(config, i):
            _confirm(shapes, layer, stack.k, kv * head_dim, "K/V heads x head_dim")
        elif stack.k and layer + stack.k[0] in shapes:
            raise ModelInconsistent(f"{layer + stack.k[0]} exists, but the config says layer {i} "
                                   "reuses an earlier layer's keys and values; checkpoint and "
                                   "config disagree")
        _confirm(shapes, layer, stack.qkv, (heads + 2 * kv) * head_dim,
                 "(heads + 2 x K/V heads) x head_dim")
        width = _mlp_width(shapes, layer, stack)
        if width != stack.mlp_config(config, i):
            raise ModelInconsistent(f"layer {layer[:-1]} has MLP width {width} but the config says "
                                   f"{stack.mlp_config(config, i)}; checkpoint and config disagree")
        out.mlp.append(width)
        if experts_path and layer + experts_path in shapes:
            out.experts.append(shapes[layer + experts_path][0])
    if not stack.shared and _holds(shapes, f"{prefix}.{n}."):
        raise ModelInconsistent(f"{prefix} holds more than the {n} layers the config gives; "
                               "checkpoint and config disagree")
    return out


def _confirm(shapes: dict[str, Shape], layer: str, where: tuple[str, Reader] | None,
             expected: int, what: str) -> None:
    if where is None:
        return
    name = layer + where[0]
    if name not in shapes:
        raise ModelInconsistent(f"expected parameter {name!r} is missing")
    if where[1](shapes[name]) != expected:
        raise ModelInconsistent(f"{name} has width {where[1](shapes[name])}, the config's {what} "
                               f"is {expected}; checkpoint and config disagree")


def _mlp_width(shapes: dict[str, Shape], layer: str, stack: Stack) -> int:
    for path, reader in stack.mlp:
        if layer + path in shapes:
            return reader(shapes[layer + path])
    raise TruthUnavailable(f"no MLP weight in {layer[:-1]} at any of {[p for p, _ in stack.mlp]}")


def derive(model: nn.Module) -> Truth:
    """Derive the truth about ``model`` from its config, parameter shapes and storage.

    A quantized model's own tensors are packed, wrapped or missing (research, trap X4): its
    truth is that of its full-precision source, the same class built by transformers from the
    same config on the meta device, with the real model's device and class.
    """
    from pytest_invarlock.hf_adapter.state import deep

    if deep(model):
        source = _derive(full_precision_source(model))
        return replace(source, device=str(next(model.parameters()).device),
                       model_class=type(model).__name__)
    return _derive(model)


def full_precision_source(model: nn.Module) -> nn.Module:
    """Return ``model``'s class built from its config, unquantized, on the meta device."""
    import copy

    hf: Any = model
    config = copy.deepcopy(hf.config)
    for key in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, key):
            delattr(config, key)
    with torch.device("meta"):
        source: nn.Module = type(model)(config)
    return source


def _derive(model: nn.Module) -> Truth:
    config = text_config(model)
    family = str(config.model_type)
    rule = rule_for(family)
    shapes = {n: tuple(t.shape) for n, (t, _) in named_tensors(model).items()}
    present = _present(rule, config, shapes, family_roots(model, family))
    head_dims = [(s.head_dim or rule.head_dim)(config) for s, _ in present]
    stacks = [_stack_truth(s, path, config, shapes, hd, rule.experts and rule.experts[0])
              for (s, path), hd in zip(present, head_dims, strict=True)]
    experts, per_token = _experts(rule, config, [e for s in stacks for e in s.experts])
    heads = tuple(h for s in stacks for h in s.heads)
    kv = tuple(k for s in stacks for k in s.kv)
    if not heads:
        raise TruthUnavailable(f"the config of {type(model).__name__} gives no layers")
    layer_types, window = _layer_types(model, rule, config, present, len(heads))
    return Truth(
        model_type=model_type_of(model),
        model_class=type(model).__name__,
        device=str(next(model.parameters()).device),
        n_layer=len(heads), heads=heads, kv_heads=kv, head_dim=head_dims[0],
        mlp_dims=tuple(m for s in stacks for m in s.mlp),
        experts=experts, experts_per_token=per_token,
        tied_groups=_parameter_groups(model),
        total_params=_unique_numel(model),
        attention_types=_attention_types(_attention_kind(rule, config, present), heads[0], kv[0]),
        normalization=rule.normalization,
        activations=_activations(config, rule.gated(config)),
        positional=_positional(rule, config),
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        embedding_pair=_embedding_pair(model),
        stacks=tuple(path for _, path in present),
        layer_types=layer_types, sliding_window=window,
    )


def _attention_kind(rule: Rule, config: Config, present: list[tuple[Stack, str]]) -> str:
    """Return the rule's attention, narrowed to the one stack an encoder-decoder model holds."""
    if rule.attention_of is not None:
        return rule.attention_of(config)
    sides = {s.side for s, _ in present}
    if sides == {"decoder"}:
        return "causal"
    if sides == {"encoder"}:
        return "bidirectional"
    return rule.attention


def _layer_types(model: nn.Module, rule: Rule, config: Config,
                 present: list[tuple[Stack, str]], n_layer: int
                 ) -> tuple[tuple[str, ...] | None, int | None]:
    """Return per-layer attention kinds from ``config.layer_types`` and the sliding window.

    Each attention module that keeps a ``sliding_window`` must agree: the config's window on a
    ``sliding_attention`` layer, None on any other.
    """
    declared = getattr(config, "layer_types", None)
    if not rule.layer_types or declared is None:
        return None, None
    types = tuple(str(t) for t in declared)
    if len(present) != 1:
        raise TruthUnavailable(f"config.layer_types describes one layer list, the model holds "
                               f"{[p for _, p in present]}; the truth rule cannot place it")
    if len(types) != n_layer:
        raise ModelInconsistent(f"config.layer_types has {len(types)} entries for a model of "
                               f"{n_layer} layers; checkpoint and config disagree")
    window = getattr(config, "sliding_window", None) if "sliding_attention" in types else None
    if "sliding_attention" in types and not isinstance(window, int):
        raise TruthUnavailable(f"config.layer_types has sliding_attention layers but "
                               f"config.sliding_window is {window!r}")
    prefix = present[0][1]
    for i, kind in enumerate(types):
        expected = window if kind == "sliding_attention" else None
        for name, module in model.get_submodule(f"{prefix}.{i}").named_modules():
            found = vars(module).get("sliding_window", expected)
            if found != expected:
                raise ModelInconsistent(
                    f"{prefix}.{i}.{name} attends over a window of {found!r}, but "
                    f"config.layer_types[{i}] is {kind!r} (window {expected!r}); the modeling "
                    "code and the config disagree")
    return types, window


def _positional(rule: Rule, config: Config) -> str:
    if getattr(config, "alibi", False):
        return "alibi"
    return rule.positional_of(config) if rule.positional_of else rule.positional


def _experts(rule: Rule, config: Config, found: list[int]) -> tuple[int | None, int | None]:
    if rule.experts is None:
        return None, None
    _, count, per_token = rule.experts
    if not found or set(found) != {count(config)}:
        raise ModelInconsistent(f"expert weights hold {sorted(set(found))} experts, the config "
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
    hf: Any = model  # a transformers model has these methods; any other module raises below
    try:
        inp, out = hf.get_input_embeddings(), hf.get_output_embeddings()
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
