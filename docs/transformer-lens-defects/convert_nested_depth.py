"""TL 4.3 convert_hf_key_to_tl_key converts block keys at most two submodule levels deep.

architecture_adapter.py:921-948 tries blocks.N.<sub>.<nested> and blocks.N.<sub> only, so a key
under a third level (mlp.shared_expert.gate_proj of every MoE with a gated shared expert) keeps
its HF leaf path: 'model.layers.0.mlp.shared_expert.gate_proj.weight' becomes
'blocks.0.mlp.shared_expert.gate_proj.weight' instead of 'blocks.0.mlp.shared_expert.gate.weight'.
"""
import os
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import AutoConfig, AutoModelForCausalLM
import transformer_lens.model_bridge.sources  # noqa: F401
from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_config_from_hf
from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory

hf_cfg = AutoConfig.for_model("qwen2_moe", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=2, vocab_size=128, num_experts=4,
                              num_experts_per_tok=2, moe_intermediate_size=32,
                              shared_expert_intermediate_size=64)
with torch.device("meta"):
    keys = list(AutoModelForCausalLM.from_config(hf_cfg).state_dict())
a = ArchitectureAdapterFactory.select_architecture_adapter(
    build_bridge_config_from_hf(hf_cfg, "Qwen2MoeForCausalLM", "external", torch.float32))
shared = a.get_component_mapping()["blocks"].submodules["mlp"].submodules["shared_expert"]
print("mapping: blocks.mlp.shared_expert ->", shared.name, {k: v.name for k, v in shared.submodules.items()})
bad = 0
for key in [k for k in keys if ".shared_expert." in k]:
    leaf = key.split("shared_expert.", 1)[1]          # gate_proj.weight
    hf_sub, param = leaf.split(".", 1)
    tl_sub = next(t for t, c in shared.submodules.items() if c.name == hf_sub)
    want = f"blocks.0.mlp.shared_expert.{tl_sub}.{param}"
    got = a.convert_hf_key_to_tl_key(key)
    bad += got != want
    print(f"{'ok ' if got == want else 'BAD'} {key} -> {got!r}" + ("" if got == want else f" (expected {want!r})"))
raise SystemExit(1 if bad else 0)
