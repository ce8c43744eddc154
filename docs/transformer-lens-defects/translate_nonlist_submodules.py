"""TL 4.3 translate_transformer_lens_path ignores submodule names under a non-list top-level component.

architecture_adapter.py:716-724 (the fall-through after the list branch) appends the TL path's
remaining parts verbatim to the component's HF name instead of walking its submodules. Qwen2.5-VL's
vision_encoder (model.visual) declares pos_embed -> rotary_pos_emb, yet
translate('vision_encoder.pos_embed') returns 'model.visual.pos_embed', a module Qwen2.5-VL does not have;
Qwen3-VL's deepstack_mergers -> deepstack_merger_list likewise.
"""
import os
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration
import transformer_lens.model_bridge.sources  # noqa: F401
from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_config_from_hf
from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory

hf_cfg = AutoConfig.for_model("qwen2_5_vl")
cfg = build_bridge_config_from_hf(hf_cfg, "Qwen2_5_VLForConditionalGeneration", "external", torch.float32)
a = ArchitectureAdapterFactory.select_architecture_adapter(cfg)
enc = a.get_component_mapping()["vision_encoder"]
declared = f"{enc.name}.{enc.submodules['pos_embed'].name}"
got = a.translate_transformer_lens_path("vision_encoder.pos_embed")
# the real module tree (meta device: no memory) has rotary_pos_emb, not pos_embed
with torch.device("meta"):
    visual = Qwen2_5_VLForConditionalGeneration._from_config(hf_cfg).model.visual
print(f"mapping declares vision_encoder.pos_embed -> {declared!r}")
print(f"translate_transformer_lens_path('vision_encoder.pos_embed') -> {got!r}")
print(f"model.visual has rotary_pos_emb: {hasattr(visual, 'rotary_pos_emb')}, pos_embed: {hasattr(visual, 'pos_embed')}")
bad = got != declared
print("BAD: translation ignores the submodule's HF name" if bad else "ok")
# same in Qwen3-VL / Qwen3-VL-MoE: deepstack_mergers -> deepstack_merger_list
cfg3 = build_bridge_config_from_hf(AutoConfig.for_model("qwen3_vl"), "Qwen3VLForConditionalGeneration", "external", torch.float32)
a3 = ArchitectureAdapterFactory.select_architecture_adapter(cfg3)
enc3 = a3.get_component_mapping()["vision_encoder"]
declared3 = f"{enc3.name}.{enc3.submodules['deepstack_mergers'].name}.0"
got3 = a3.translate_transformer_lens_path("vision_encoder.deepstack_mergers.0")
print(f"{'BAD' if got3 != declared3 else 'ok '} Qwen3-VL translate('vision_encoder.deepstack_mergers.0') -> {got3!r}; mapping declares {declared3!r}")
bad = bad or got3 != declared3
raise SystemExit(1 if bad else 0)
