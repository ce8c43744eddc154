"""Tiny, seeded, real Hugging Face models for the architectures TransformerLens supports, built offline.

The TL profile judges an ``ArchitectureAdapter`` against a real HF model of its architecture. Real
checkpoints are large and need the network, so this module builds the HF class itself from its own
default config, shrunk by a generic set of overrides (plus a small per-``model_type`` table where the
generic ones are not enough), and fills every parameter with distinct seeded values: default
initialisations leave many tensors equal (zero biases, unit norms), which would hide a swapped or
dropped weight. Nothing here imports TransformerLens: the builder is truth, the adapter is judged.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import torch
import transformers
from transformers import PretrainedConfig, PreTrainedModel

__all__ = [
    "OVERRIDES",
    "SKIP",
    "Unbuildable",
    "build",
    "inputs",
    "model_class",
    "parameter_count",
    "tiny_config",
]

#: The largest model ``build`` hands out: a tiny model should stay tiny even if an override is missing.
MAX_PARAMETERS = 5_000_000

#: The batch every ``inputs`` call describes: (batch, sequence), and the decoder length of encoder-decoders.
BATCH, SEQ, DECODER_SEQ = 2, 8, 5


class Unbuildable(Exception):
    """No tiny model of this architecture builds offline (message: one line, the cause)."""


#: Generic tiny values, applied to every config (and sub-config) that knows the attribute, directly
#: or through its ``attribute_map``. Order matters only for readability.
GENERIC: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 128,
    "max_position_embeddings": 64,
    # encoder-decoders that name the decoder/encoder sizes apart
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
    "num_decoder_layers": 2,
    "d_ff": 128,
    "d_kv": 16,
    "ffn_dim": 128,
    # MoE
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 64,
    "n_group": 1,
    "topk_group": 1,
    # SSM / hybrid
    "state_size": 8,
    "ssm_state_size": 8,
    "mamba_d_state": 8,
    "mamba_n_heads": 8,
    "mamba_d_head": 16,
    "mamba_n_groups": 1,
    "mamba_d_conv": 4,
    "conv_kernel": 4,
    "n_groups": 1,
    "time_step_rank": 8,
    # multi-head latent attention (DeepSeek family)
    "q_lora_rank": 32,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    # linear attention (Qwen3-Next family)
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_conv_kernel_dim": 4,
    # sliding windows larger than the test sequence would make no difference; smaller ones test the mask
    "sliding_window": 4,
    # partial rotary embeddings sized for the 16-wide heads (GPT-J, CodeGen)
    "rotary_dim": 8,
    # per-layer input embeddings (Gemma 3n/4)
    "vocab_size_per_layer_input": 128,
    "hidden_size_per_layer_input": 16,
    # second MLP widths and projector widths of multimodal models (Llama 4, GLM-4V)
    "intermediate_size_mlp": 128,
    "out_hidden_size": 64,
    "vision_output_dim": 64,
    "projector_input_dim": 64,
    "projector_output_dim": 64,
    # vision towers (only reached through sub-configs)
    "image_size": 32,
    "patch_size": 8,
    "num_channels": 3,
}


def _mrope(theta: float) -> dict[str, Any]:
    """Return multimodal rotary parameters whose sections sum to head_dim / 2 (8 for 16-wide heads)."""
    return {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": theta}


#: model_type -> config overrides that make that model type tiny (a declarative table; only where the
#: generic overrides are not enough).
OVERRIDES: dict[str, dict[str, Any]] = {
    # hybrids whose default layer pattern has no attention layer within the first two layers
    "bamba": {"attn_layer_indices": [1]},
    "granitemoehybrid": {"layer_types": ["linear_attention", "attention"]},
    "jamba": {
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
    },
    "lfm2_moe": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1},
    "recurrent_gemma": {"block_types": ["recurrent", "attention"]},
    "zamba2": {"layers_block_type": ["mamba", "hybrid"], "n_mamba_heads": 8},
    # SSM widths that must agree: expand * hidden_size == heads * head_dim
    "mamba2": {"num_heads": 8, "head_dim": 16, "expand": 2},
    "falcon_h1": {"mamba_d_ssm": 128, "mamba_n_heads": 8, "mamba_d_head": 16},
    "glm4v_text": {"rope_parameters": _mrope(1e4)},
    # audio front ends: a 7-layer conv feature extractor and a spectrogram patcher, narrowed
    "wav2vec2": {"conv_dim": (32,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4},
    "hubert": {"conv_dim": (32,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4},
    "audio-spectrogram-transformer": {"max_length": 32, "num_mel_bins": 32},
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},
    # multimodal rotary sections that must sum to head_dim / 2
    "qwen2_5_vl_text": {"rope_parameters": _mrope(1e6)},
}

#: Architecture name -> one-line reason it is not built (known before trying).
SKIP: dict[str, str] = {
    "Emu3ForConditionalGeneration": "needs a VQ-VAE vocabulary_map (image-token table) a bare config lacks",
    "Florence2ForConditionalGeneration": "DaViT vision tower (~90M parameters) has no tiny override here",
    "Gemma3nForConditionalGeneration": "vision tower is a timm wrapper needing timm and PIL (not installed)",
    "Llama4ForConditionalGeneration": "transformers 5.24: text-only forward fails (no image_outputs)",
    "MuseGlimmerForConditionalGeneration": "vision adapter stays ~17M parameters with the generic overrides",
    **{
        arch: "not a transformers class (remote code or a TransformerLens-native model)"
        for arch in (
            "BaiChuanForCausalLM",
            "BaichuanForCausalLM",
            "BD3LM",
            "DreamModel",
            "ExaoneForCausalLM",
            "GiddForDiffusionLM",
            "Gemma1ForCausalLM",
            "GPT2LMHeadCustomModel",
            "HyenaDNAForCausalLM",
            "InternLM2ForCausalLM",
            "JetMoEForCausalLM",
            "LLaDA2MoeModelLM",
            "LLaDAModelLM",
            "MinGPTForCausalLM",
            "MPTForCausalLM",
            "NanoGPTForCausalLM",
            "NeelSoluOldForCausalLM",
            "NeoForCausalLM",
            "NeoXForCausalLM",
            "OpenELMForCausalLM",
            "OuroForCausalLM",
            "PhiMoEForCausalLM",
            "QwenForCausalLM",
            "RavenForCausalLM",
            "RWKV7ForCausalLM",
            "T5WithLMHeadModel",
            "TransformerLensNative",
            "TransformerLensPretrain",
        )
    },
}


def model_class(arch: str) -> type[PreTrainedModel]:
    """Return the transformers class named ``arch``; Unbuildable when transformers has no such class."""
    cls = getattr(transformers, arch, None)
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)):
        raise Unbuildable(f"transformers {transformers.__version__} has no model class {arch}")
    return cls


def _real_name(config: PretrainedConfig, name: str) -> str:
    """Return the attribute ``name`` is stored under (``attribute_map`` aliases such as GPT-2's n_embd)."""
    return str(config.attribute_map.get(name, name))


def _tiny_kwargs(config_class: type[PretrainedConfig], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Return the constructor kwargs that shrink ``config_class``: generic values it knows, then ``extra``.

    Passed to the constructor (not set afterwards) so that derived values, such as ``layer_types``
    or a ``head_dim`` computed from the hidden size, follow the tiny sizes.
    """
    default = config_class()
    kwargs: dict[str, Any] = {}
    for name, value in GENERIC.items():
        real = _real_name(default, name)
        if isinstance(getattr(config_class, real, None), property):
            continue  # derived (Falcon's head_dim): follows the sizes it is derived from
        try:
            current = getattr(default, real)
        except AttributeError:
            continue
        except Exception:  # a per-layer attribute that refuses a global read (Gemma 4): still settable
            current = None
        if current is None or type(current) is type(value):
            kwargs[real] = value
    if "qk_rope_head_dim" in kwargs and "head_dim" in kwargs:
        kwargs["head_dim"] = kwargs["qk_rope_head_dim"]  # multi-head latent attention: rotary width
    if "kv_lora_rank" in kwargs and "num_key_value_heads" in kwargs:
        kwargs["num_key_value_heads"] = kwargs.get("num_attention_heads", 4)  # MLA has no grouped KV
    vocab = kwargs.get(_real_name(default, "vocab_size"))
    if isinstance(vocab, int):
        for name, small in _SPECIAL_TOKENS.items():
            current = getattr(default, name, None)
            if isinstance(current, int) and current >= vocab:
                kwargs[name] = small
            elif isinstance(current, list) and any(isinstance(t, int) and t >= vocab for t in current):
                kwargs[name] = small
    layers = kwargs.get(_real_name(default, "num_hidden_layers"))
    if isinstance(layers, int):
        for name in _LAYER_LISTS:
            current = getattr(default, name, None) if name in default.to_dict() else None
            if isinstance(current, list) and current and len(current) != layers:
                kwargs[name] = _pattern(current, layers)
    for key in getattr(default, "sub_configs", {}) or {}:
        sub = getattr(default, key, None)
        if isinstance(sub, PretrainedConfig):
            sub_extra = OVERRIDES.get(str(getattr(sub, "model_type", "")), {})
            sub_kwargs = _tiny_kwargs(type(sub), sub_extra)
            kwargs[key] = type(sub)(**sub_kwargs).to_dict()
    for name, value in extra.items():
        kwargs[_real_name(default, name)] = value
    return kwargs


#: Special token ids moved inside the tiny vocabulary when the default lies outside it.
_SPECIAL_TOKENS: dict[str, int] = {
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 0,
    "sep_token_id": 2,
    "cls_token_id": 1,
    "mask_token_id": 3,
    "unk_token_id": 0,
}

#: Per-layer lists that follow the depth.
_LAYER_LISTS = ("layer_types", "layers_block_type", "block_types", "attention_layers")


def _pattern(values: list[Any], layers: int) -> list[Any]:
    """Return a ``layers``-long per-layer list keeping every kind in ``values`` (a hybrid keeps attention)."""
    kinds = list(dict.fromkeys(values))
    picked = kinds[:layers]
    return picked + [values[0]] * (layers - len(picked))


def _trim_layer_lists(config: PretrainedConfig) -> None:
    """Cut per-layer lists (``layer_types`` and kin) left at the default depth down to the tiny depth."""
    for cfg in (config, *(getattr(config, k, None) for k in getattr(config, "sub_configs", {}) or {})):
        if not isinstance(cfg, PretrainedConfig):
            continue
        layers = getattr(cfg, "num_hidden_layers", None)
        if not isinstance(layers, int):
            continue
        for name in ("layer_types", "layers_block_type", "hybrid_override_pattern", "block_types"):
            value = getattr(cfg, name, None)
            if isinstance(value, (list, str)) and len(value) > layers:
                setattr(cfg, name, value[:layers])


def tiny_config(arch: str) -> PretrainedConfig:
    """Return a fresh tiny config for ``arch``: its config class's defaults, shrunk, eager attention."""
    cls = model_class(arch)
    config_class = cls.config_class
    if config_class is None:
        raise Unbuildable(f"{arch} declares no config_class")
    model_type = str(getattr(config_class, "model_type", ""))
    try:
        config = config_class(**_tiny_kwargs(config_class, OVERRIDES.get(model_type, {})))
    except Exception as e:  # a config class that rejects the tiny values
        raise Unbuildable(_one_line(f"config {config_class.__name__}", e)) from e
    _trim_layer_lists(config)
    config._attn_implementation = "eager"
    return config


def _one_line(where: str, error: BaseException) -> str:
    """Format a one-line cause for an Unbuildable message."""
    text = " ".join(str(error).split())
    return f"{where}: {type(error).__name__}: {text}"[:300]


def _is_norm_weight(model: torch.nn.Module, name: str, param: torch.Tensor) -> bool:
    """Tell whether ``name`` is the 1-D scale of a norm layer (filled near 1: activations keep their size)."""
    if param.ndim != 1:
        return False
    owner_name, _, leaf = name.rpartition(".")
    if leaf not in ("weight", "scale", "g", "gamma"):
        return False
    owner = model.get_submodule(owner_name) if owner_name else model
    if "norm" in type(owner).__name__.lower():
        return True
    last = owner_name.rpartition(".")[2].lower()
    return "norm" in last or last.startswith(("ln", "layernorm")) or last.endswith(("_ln", "ln"))


def fill(model: torch.nn.Module, seed: int) -> None:
    """Give every parameter (tied ones once) distinct seeded values: randn * 0.1, norm weights + 1.

    Frozen parameters (``requires_grad`` False: sinusoidal position tables such as Marian's)
    keep what the model computed: transformers recomputes them on load, so random values there
    would make a saved checkpoint load as another model.
    """
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            generator = torch.Generator().manual_seed(seed ^ zlib.crc32(name.encode()))
            values = torch.randn(param.shape, generator=generator, dtype=torch.float32) * 0.1
            if _is_norm_weight(model, name, param):
                values += 1.0
            param.copy_(values.to(param.dtype))


def _from_auto(auto: Any, config: PretrainedConfig, arch: str) -> Any:
    """Build through an Auto class; where it cannot pick one class (DeiT maps to two), the named one."""
    try:
        return auto.from_config(config)
    except TypeError:
        return model_class(arch)(config)


def build(arch: str, seed: int = 0, cls: type | None = None) -> torch.nn.Module:
    """Build a tiny seeded fp32 model of ``arch`` in eval mode; Unbuildable with the cause if none builds.

    ``cls``: the model class to build (default: the transformers class named ``arch``); the
    profile passes the class TransformerLens loads for the name (``BloomModel`` loads as
    ``BloomForCausalLM``).
    """
    if arch in SKIP:
        raise Unbuildable(SKIP[arch])
    config = tiny_config(arch)
    cls = cls or model_class(arch)
    try:
        # an Auto class (what TransformerLens loads with) picks the concrete class from the config
        auto = cls.__name__.startswith("Auto") and hasattr(cls, "from_config")
        model = _from_auto(cls, config, arch) if auto else cls(config)
    except Exception as e:
        raise Unbuildable(_one_line(f"{arch}(config)", e)) from e
    count = parameter_count(model)
    if count > MAX_PARAMETERS:
        raise Unbuildable(f"{arch}: {count} parameters, over the {MAX_PARAMETERS} limit")
    module: torch.nn.Module = model  # typed as a plain module: PreTrainedModel.to/eval are untyped
    module.to(torch.float32)
    module.eval()
    fill(module, seed)
    return module


def _text_config(model: torch.nn.Module) -> PretrainedConfig:
    """Return the config that holds the text vocabulary (the top config for text-only models)."""
    config = getattr(model, "config", None)
    if not isinstance(config, PretrainedConfig):
        raise TypeError(f"{type(model).__name__} has no transformers config")
    text = config.get_text_config(decoder=True)
    return text if isinstance(text, PretrainedConfig) else config


#: Raw audio samples per batch row for wav2vec2-style conv front ends (7 output frames).
AUDIO_SAMPLES = 2400


def _non_text_inputs(model: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor] | None:
    """Return seeded pixel or audio inputs for vision/audio encoders (None for text models)."""
    config = getattr(model, "config", None)
    main = getattr(model, "main_input_name", "input_ids")
    if main == "pixel_values":
        size = int(getattr(config, "image_size", 32))
        channels = int(getattr(config, "num_channels", 3))
        return {"pixel_values": torch.randn(BATCH, channels, size, size, generator=generator)}
    if main == "input_values":
        if config is not None and hasattr(config, "num_mel_bins"):  # AST: (batch, frames, mel bins)
            shape = (BATCH, int(config.max_length), int(config.num_mel_bins))
            return {"input_values": torch.randn(*shape, generator=generator)}
        return {"input_values": torch.randn(BATCH, AUDIO_SAMPLES, generator=generator)}
    return None


def inputs(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Return deterministic forward kwargs for one (2, 8) batch: input_ids (+ decoder_input_ids (2, 5)).

    Vision and audio encoders get seeded ``pixel_values`` (2, C, 32, 32) or ``input_values`` instead.
    """
    config = getattr(model, "config", None)
    generator = torch.Generator().manual_seed(seed)
    other = _non_text_inputs(model, generator)
    if other is not None:
        return other
    vocab = int(getattr(_text_config(model), "vocab_size", 0) or 0)
    if vocab < 2:
        raise TypeError(f"{type(model).__name__}: no usable vocab_size")
    kwargs: dict[str, torch.Tensor] = {
        "input_ids": torch.randint(1, vocab, (BATCH, SEQ), generator=generator),
    }
    if getattr(config, "is_encoder_decoder", False):
        kwargs["decoder_input_ids"] = torch.randint(1, vocab, (BATCH, DECODER_SEQ), generator=generator)
    return kwargs


def parameter_count(model: torch.nn.Module) -> int:
    """Count the distinct parameter elements (tied parameters counted once)."""
    return sum(p.numel() for p in model.parameters())
