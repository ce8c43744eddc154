"""Hybrid models (RecurrentGemma): state_dict() drops whole sublayers of the heterogeneous blocks.

RecurrentGemma alternates recurrent and attention layers; the adapter maps each block as an opaque-ish
component whose template (adapter.component_mapping) does not declare `temporal_block` / `mlp_block`
children, and TransformerBridge._is_valid_bridge_path (transformer_bridge.py:4509) validates every key
against that static template, so every recurrent/attention/MLP weight of the blocks is rejected.
strict=True does not notice. Expected: every HF tensor restored, logits equal. Exit 1 if the defect shows.
"""
import copy, os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformer_lens.model_bridge.sources import build_bridge_from_module

ARCH = "RecurrentGemmaForCausalLM"
torch.manual_seed(0)
cfg = AutoConfig.for_model("recurrent_gemma", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=128,
                           lru_width=64, attention_window_size=16, block_types=["recurrent", "attention"])
cfg._attn_implementation = "eager"
model = AutoModelForCausalLM.from_config(cfg).eval()
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.05 * torch.randn_like(p))
ids = torch.randint(0, 128, (2, 8))
first = build_bridge_from_module(copy.deepcopy(model), ARCH, hf_config=model.config)
state = first.state_dict()
perturbed = copy.deepcopy(model)
with torch.no_grad():
    for p in perturbed.parameters():
        p.add_(0.5 * torch.randn_like(p))
second = build_bridge_from_module(perturbed, ARCH, hf_config=model.config)
second.load_state_dict(state, strict=True)
truth = model.state_dict()
now = {k.replace("._original_component", ""): v for k, v in perturbed.state_dict().items()}
lost = sorted(k for k, v in truth.items() if v.is_floating_point() and not torch.equal(now[k], v))
with torch.no_grad():
    gap = float((second(ids) - first(ids)).abs().max())
print(f"state_dict() keys: {len(state)}; HF float tensors: {sum(v.is_floating_point() for v in truth.values())}")
print(f"strict=True load raised nothing; HF tensors not restored: {len(lost)}, e.g. {lost[:6]}")
print(f"logits after the round trip differ by {gap:.3g} (expected 0)")
sys.exit(1 if lost or gap > 0 else 0)
