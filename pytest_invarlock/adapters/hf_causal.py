"""``hf_causal``: decoder-only causal LMs; ``hf_gpt2`` and ``hf_llama``: its legacy family names."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from pytest_invarlock.adapters.base import HFAdapterBase

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_LAYER_LISTS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers",
                "transformer.layers")
_MLP_UP = ("up_proj", "c_fc", "fc1", "dense_h_to_4h", "w1")
_GATED_ACTS = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu",
               "gelu_pytorch_tanh": "geglu"}


def _config(model: nn.Module) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _layers(model: nn.Module) -> nn.ModuleList:
    for path in _LAYER_LISTS:
        try:
            found = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(found, nn.ModuleList):
            return found
    raise ValueError(f"{type(model).__name__}: no decoder layer list at any of {_LAYER_LISTS}")


def _out_features(module: nn.Module) -> int:
    if hasattr(module, "out_features"):
        return int(module.out_features)
    return int(module.nf)  # transformers' Conv1D (GPT-2) stores the output width as nf


def _mlp_width(layer: nn.Module) -> int:
    for name, module in layer.named_modules():
        if name.rpartition(".")[2] in _MLP_UP:
            return _out_features(module)
    raise ValueError(f"{type(layer).__name__}: no MLP up-projection among {_MLP_UP}")


def _head_counts(config: Any) -> tuple[int, int, int]:
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return heads, kv, head_dim


def _tying(model: nn.Module) -> dict[str, str]:
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        tied_to = first.setdefault(id(param), name)
        if tied_to != name:
            tied[name] = tied_to
    return tied


def _architecture(model: nn.Module, config: Any, heads: int, kv: int) -> dict[str, str]:
    kinds = {type(m).__name__.lower() for m in model.modules()}
    act = str(getattr(config, "hidden_act", None) or getattr(config, "activation_function", ""))
    gated = any(n.endswith("gate_proj") for n, _ in model.named_modules())
    attention = "causal" if kv == heads else ("mqa" if kv == 1 else "gqa")
    return {
        "attention_type": attention,
        "normalization_type": "rmsnorm" if any("rmsnorm" in k for k in kinds) else "layernorm",
        "activation": _GATED_ACTS.get(act, act) if gated else act.split("_")[0],
        "positional_encoding": "rope" if any("rotary" in k for k in kinds) else "learned",
    }


class HFCausalAdapter(HFAdapterBase):
    """Decoder-only causal language models loaded with ``AutoModelForCausalLM``."""

    name: ClassVar[str] = "hf_causal"
    auto_class: ClassVar[str] = "AutoModelForCausalLM"
    #: ``config.model_type`` values this adapter accepts; empty means every causal LM.
    families: ClassVar[frozenset[str]] = frozenset()

    def can_handle(self, model: Any) -> bool:
        """Return whether ``model`` is a transformers decoder-only causal LM of our families."""
        config = getattr(model, "config", None)
        if not isinstance(model, nn.Module) or config is None:
            return False
        if getattr(config, "is_encoder_decoder", False):
            return False
        if self.families and getattr(config, "model_type", None) not in self.families:
            return False
        return type(model).__name__.endswith(_CAUSAL_SUFFIXES)

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """Describe layers, heads, MLP widths and ties from the model's modules and config."""
        config = _config(model)
        layers = _layers(model)
        heads, kv, head_dim = _head_counts(config)
        desc: dict[str, Any] = {
            "n_layer": len(layers),
            "heads_per_layer": [heads] * len(layers),
            "mlp_dims": [_mlp_width(layer) for layer in layers],
            "tying": _tying(model),
            "model_type": str(config.model_type),
            "model_class": type(model).__name__,
            "total_params": sum(p.numel() for p in model.parameters()),
            "device": str(next(model.parameters()).device),
            "architecture": _architecture(model, config, heads, kv),
        }
        if kv != heads:
            desc["gqa_config"] = {"num_attention_heads": heads, "num_key_value_heads": kv,
                                  "head_dim": head_dim, "gqa_ratio": heads // kv}
        return desc


class HFGPT2Adapter(HFCausalAdapter):
    """Legacy ``hf_gpt2`` (spec 000): GPT-2 style models only."""

    name: ClassVar[str] = "hf_gpt2"
    families: ClassVar[frozenset[str]] = frozenset({"gpt2"})


class HFLlamaAdapter(HFCausalAdapter):
    """Legacy ``hf_llama`` (spec 000): LLaMA and its close relatives."""

    name: ClassVar[str] = "hf_llama"
    families: ClassVar[frozenset[str]] = frozenset({"llama", "mistral", "qwen2", "qwen3", "yi"})
