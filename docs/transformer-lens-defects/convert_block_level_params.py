"""TL 4.3 convert_hf_key_to_tl_key leaves a block's own parameters (owned by no mapped submodule) unconverted.

architecture_adapter.py:921-950: inside blocks.N only mapped submodules are tried; a parameter that
sits directly on the block (Gemma 4's per-layer `layer_scalar`; RecurrentGemma's temporal_pre_norm /
temporal_block and Zamba2's hybrid-layer linear / mamba_decoder, which the mapping does not list)
falls through to `return hf_key` (line 950): 'model.layers.0.layer_scalar' comes back unchanged
instead of 'blocks.0.layer_scalar', silently mixing HF and TL names in bridge.state_dict().
"""
import os
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import AutoConfig, AutoModelForCausalLM
import transformer_lens.model_bridge.sources  # noqa: F401
from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_config_from_hf
from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory

hf_cfg = AutoConfig.for_model("gemma4_text", num_hidden_layers=2)
with torch.device("meta"):
    keys = [k for k in AutoModelForCausalLM.from_config(hf_cfg).state_dict() if k.endswith("layer_scalar")]
a = ArchitectureAdapterFactory.select_architecture_adapter(
    build_bridge_config_from_hf(hf_cfg, "Gemma4ForCausalLM", "external", torch.float32))
bad = 0
for key in keys:
    want = "blocks." + key[len("model.layers."):]
    got = a.convert_hf_key_to_tl_key(key)
    bad += got != want
    print(f"{'ok ' if got == want else 'BAD'} {key} -> {got!r}" + ("" if got == want else f" (returned unchanged; expected {want!r})"))
# RecurrentGemma: the recurrent layers' temporal_pre_norm / temporal_block are not in the mapping
rg = AutoConfig.for_model("recurrent_gemma", num_hidden_layers=2, block_types=["recurrent", "attention"])
with torch.device("meta"):
    rkeys = [k for k in AutoModelForCausalLM.from_config(rg).state_dict() if k.startswith("model.layers.0.temporal_pre_norm")]
ra = ArchitectureAdapterFactory.select_architecture_adapter(
    build_bridge_config_from_hf(rg, "RecurrentGemmaForCausalLM", "external", torch.float32))
for key in rkeys:
    got = ra.convert_hf_key_to_tl_key(key)
    bad += got == key
    print(f"{'BAD' if got == key else 'ok '} {key} -> {got!r}" + (" (returned unchanged; expected 'blocks.0.temporal_pre_norm.weight')" if got == key else ""))
raise SystemExit(1 if bad else 0)
