"""Multimodal (LLaVA): state_dict() has no key for any weight inside the vision tower's layer list.

The vision encoder is mapped as vision_encoder -> encoder_layers (a list component whose HF name is dotted,
'vision_model.encoder.layers'). _is_valid_bridge_path (transformer_bridge.py:4509) skips a layer index only
at the top level and matches submodules one dot-segment at a time, so every key inside the nested layer list
is rejected, under both its HF spelling and its bridge spelling. Text-only logits do not show it, but the
weights are lost on save/restore and a perturbed copy keeps its perturbed vision tower after a strict load.
Expected: every vision-tower tensor restored. Exit 1 if the defect shows.
"""
import copy, os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
from transformer_lens.model_bridge.sources import build_bridge_from_module

torch.manual_seed(0)
cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                 num_attention_heads=4, image_size=32, patch_size=8),
                  text_config=LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                          max_position_embeddings=64), image_token_index=127)
cfg._attn_implementation = "eager"
model = LlavaForConditionalGeneration(cfg).eval()
first = build_bridge_from_module(copy.deepcopy(model), "LlavaForConditionalGeneration", hf_config=model.config)
state = first.state_dict()
vision_hf = [k for k in model.state_dict() if k.startswith("model.vision_tower.")]
enc = first.adapter.component_mapping["vision_encoder"]
layers = enc.submodules["encoder_layers"]
declared = f"{enc.name}.{layers.name}"
try:
    model.get_submodule(declared); resolves = True
except AttributeError:
    resolves = False
print(f"mapping declares the vision layer list at {declared!r}; it resolves on the HF model: {resolves}")
vision_sd = [k for k in state if k.startswith(("vision_encoder", "model.vision_tower"))]
print(f"HF vision-tower tensors: {len(vision_hf)}; state_dict() keys for the vision tower: {len(vision_sd)}: {vision_sd[:8]}")
perturbed = copy.deepcopy(model)
with torch.no_grad():
    for p in perturbed.parameters():
        p.add_(0.5 * torch.randn_like(p))
second = build_bridge_from_module(perturbed, "LlavaForConditionalGeneration", hf_config=model.config)
second.load_state_dict(state, strict=True)
truth = model.state_dict()
now = {k.replace("._original_component", ""): v for k, v in perturbed.state_dict().items()}
lost = [k for k in vision_hf if not torch.equal(now[k], truth[k])]
print(f"strict=True load raised nothing; vision-tower tensors not restored: {len(lost)}/{len(vision_hf)}, "
      f"e.g. {lost[:3]} (expected 0)")
sys.exit(1 if lost else 0)
