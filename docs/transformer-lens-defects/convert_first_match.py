"""TL 4.3 convert_hf_key_to_tl_key takes the first top-level component whose HF path prefixes the key.

architecture_adapter.py:908-914 returns on the first prefix match in mapping order, not the longest
one. In Qwen3-VL (also Qwen3-VL-MoE, Qwen3.5 multimodal, GLM-4V) vision_encoder = model.visual comes
before vision_projector = model.visual.merger, so every merger key is attributed to the encoder:
'model.visual.merger.norm.weight' -> 'vision_encoder.merger.norm.weight', not 'vision_projector.norm.weight'.
"""
import os
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import AutoConfig, Qwen3VLForConditionalGeneration
import transformer_lens.model_bridge.sources  # noqa: F401
from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_config_from_hf
from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory

hf_cfg = AutoConfig.for_model("qwen3_vl")
with torch.device("meta"):  # the real key set, no memory
    keys = [k for k in Qwen3VLForConditionalGeneration._from_config(hf_cfg).state_dict() if k.startswith("model.visual.merger.")]
a = ArchitectureAdapterFactory.select_architecture_adapter(
    build_bridge_config_from_hf(hf_cfg, "Qwen3VLForConditionalGeneration", "external", torch.float32))
m = a.get_component_mapping()
print("mapping order:", [(k, v.name) for k, v in m.items() if k.startswith("vision")])
bad = 0
for key in keys:
    want = "vision_projector." + key[len("model.visual.merger."):]
    got = a.convert_hf_key_to_tl_key(key)
    bad += got != want
    print(f"{'ok ' if got == want else 'BAD'} {key} -> {got!r}" + ("" if got == want else f" (expected {want!r}: the deepest owner)"))
raise SystemExit(1 if bad else 0)
