"""TL 4.3 _preprocess_parameter_path strips ".b"/".w" anywhere in a path, not only as the final parameter.

architecture_adapter.py:890-891 does path.replace(".w", "") / path.replace(".b", "") on the whole
path, so component names that merely start with "b"/"w" are mangled:
  vision_encoder.blocks -> vision_encoderlocks, mixer.b_layernorm -> mixer_layernorm,
  scorer.weights_proj -> scorereights_proj.
Expected: only a trailing ".w"/".b" parameter alias is rewritten.
"""
import os
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import AutoConfig
import transformer_lens.model_bridge.sources  # noqa: F401  (registers the sources)
from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_config_from_hf
from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory


def adapter(model_type: str, arch: str):
    cfg = build_bridge_config_from_hf(AutoConfig.for_model(model_type), arch, "external", torch.float32)
    return ArchitectureAdapterFactory.select_architecture_adapter(cfg)


cases = [  # (model_type, architecture, TL path, the HF path the mapping declares)
    ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "vision_encoder.blocks.0", "model.visual.blocks.0"),
    ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "vision_encoder.blocks.0.mlp.W_in", None),
    ("jamba", "JambaForCausalLM", "blocks.0.mixer.b_layernorm", "model.layers.0.mamba.b_layernorm"),
    ("jamba", "JambaForCausalLM", "blocks.0.mixer.b_layernorm.w", "model.layers.0.mamba.b_layernorm.weight"),
]
bad = 0
for mt, arch, path, want in cases:
    a = adapter(mt, arch)
    pre = a._preprocess_parameter_path(path)
    try:
        got = a.translate_transformer_lens_path(path)
    except Exception as exc:  # noqa: BLE001
        got = f"{type(exc).__name__}: {exc}"
    ok = want is None and not got.startswith("ValueError") or got == want
    bad += not ok
    print(f"{'ok ' if ok else 'BAD'} {arch}: _preprocess_parameter_path({path!r}) = {pre}; "
          f"translate -> {got!r}" + ("" if ok else f" (expected {want or 'a model.visual.blocks.0.mlp.* path'!r})"))
# DeepSeek-V4's indexer scorer has a 'weights_proj' submodule: '.weights_proj' loses '.w'
a = adapter("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration")
p = a._preprocess_parameter_path("blocks.1.attn.compressor.indexer.scorer.weights_proj")[0]
print(("BAD" if p.endswith("scorereights_proj") else "ok ") + f" '...scorer.weights_proj' preprocesses to {p!r}")
bad += p.endswith("scorereights_proj")
raise SystemExit(1 if bad else 0)
