"""TL 4.3 CLIP/SigLIP vision-encoder mappings declare pre-transformers-5.6 paths ('vision_model.*').

generalized_components/clip_vision_encoder.py:162-174 and siglip_vision_encoder.py:163-171 name the
encoder's parts 'vision_model.embeddings', 'vision_model.encoder.layers', ...; since transformers
5.6 CLIPVisionModel/SiglipVisionModel hold them directly. set_original_component() (:232-234 in both)
papers over it with object.__setattr__(module, 'vision_model', module), an unregistered self-alias,
so the paths resolve only on a model that has been bridged. On the real HF model, and in its
state-dict key space, translate_transformer_lens_path gives names that do not exist
(Llava, LlavaNext, LlavaOnevision, Gemma3 multimodal, Idefics3).
"""
import os
os.environ["HF_HUB_OFFLINE"] = "1"
import copy
import torch
import transformers
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
import transformer_lens.model_bridge.sources as sources
from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_config_from_hf
from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory

cfg = LlavaConfig(
    vision_config=CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=4, image_size=32, patch_size=8),
    text_config=LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=128), image_token_index=127)
model = LlavaForConditionalGeneration(cfg).eval()
a = ArchitectureAdapterFactory.select_architecture_adapter(
    build_bridge_config_from_hf(cfg, "LlavaForConditionalGeneration", "external", torch.float32))
enc = a.get_component_mapping()["vision_encoder"]
path = f"{enc.name}.{enc.submodules['embeddings'].name}"  # what the mapping declares (and bridging uses)
print("transformers", transformers.__version__)
print("mapping declares vision_encoder.embeddings ->", repr(path))
print("translate('vision_encoder.embeddings') ->", repr(a.translate_transformer_lens_path("vision_encoder.embeddings")),
      "(right only because translation ignores submodule names: see translate_nonlist_submodules.py)")
try:
    a.get_component(model, "vision_encoder.embeddings")
    print("get_component(real model, 'vision_encoder.embeddings'): ok")
except Exception as exc:
    print(f"get_component(real model, 'vision_encoder.embeddings') raised {type(exc).__name__}: {exc}")
try:
    model.get_submodule(path)
    on_real = True
except AttributeError:
    on_real = False
in_keys = any(k.startswith(path + ".") for k in model.state_dict())
print(f"on the real HF model: get_submodule resolves: {on_real}; a state-dict key starts with it: {in_keys}")
print("real path of that module:", [n for n, _ in model.named_modules() if n.endswith("vision_tower.embeddings")])
bridged = copy.deepcopy(model)
sources.build_bridge_from_module(bridged, "LlavaForConditionalGeneration", hf_config=bridged.config)
tower = bridged.model.vision_tower
tower = getattr(tower, "original_component", tower)
print("after bridging, vision_tower.vision_model is vision_tower itself (unregistered alias):",
      tower.__dict__.get("vision_model") is tower)
raise SystemExit(0 if on_real else 1)
