"""TL 4.3 routes model_type 'gemma3' (the multimodal config) to the text-only Gemma3ForCausalLM adapter, which then crashes.

sources/_hf_format.py:352 maps "gemma3" -> "Gemma3ForCausalLM" although Gemma3ForConditionalGeneration
(the architecture of every gemma3-typed checkpoint) is supported; boot then loads with
AutoModelForCausalLM, which for a gemma3 config builds Gemma3ForConditionalGeneration, and the text
adapter's 'model.embed_tokens' is not on it: AttributeError "'Gemma3Model' object has no attribute
'embed_tokens'". This mirrors boot_transformers on a gemma3 checkpoint without `architectures`.
Expected: "gemma3" -> Gemma3ForConditionalGeneration (the text-only model_type is "gemma3_text").
"""
import os
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import Gemma3Config
import transformer_lens.model_bridge.sources as sources
from transformer_lens.model_bridge.sources._hf_format import determine_architecture_from_hf_config
from transformer_lens.model_bridge.sources.transformers.helpers import get_hf_model_class_for_architecture

cfg = Gemma3Config(
    text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, vocab_size=300, sliding_window=4),
    vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                       image_size=32, patch_size=8),
    mm_tokens_per_image=4, image_token_index=299, boi_token_index=297, eoi_token_index=298)
cfg.architectures = None
arch = determine_architecture_from_hf_config(cfg)
loader = get_hf_model_class_for_architecture(arch)
cfg._attn_implementation = "eager"
model = loader.from_config(cfg).eval()
print(f"model_type 'gemma3' without architectures -> {arch}; TL loads it with {loader.__name__} -> {type(model).__name__}")
try:
    sources.build_bridge_from_module(model, arch, hf_config=cfg)
    print("bridge built")
    raise SystemExit(0)
except AttributeError as exc:
    print(f"BAD: building the bridge raised AttributeError: {exc} (expected Gemma3ForConditionalGeneration's adapter)")
    raise SystemExit(1)
