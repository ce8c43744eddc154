"""TransformerBridge.state_dict() drops the fused MoE expert tensors of transformers 5 (Mixtral).

In transformers 5, MixtralExperts holds 3-D nn.Parameters `gate_up_proj` / `down_proj` (no `.weight` leaf).
Expected: the bridge's state_dict(), loaded with strict=True into a bridge over a perturbed copy, restores
them and the logits. Got: no key holds them, strict=True raises nothing, the logits differ. Exit 1 if present.
"""
import copy, os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformer_lens.model_bridge.sources import build_bridge_from_module

ARCH, TYPE = "MixtralForCausalLM", "mixtral"
torch.manual_seed(0)
cfg = AutoConfig.for_model(TYPE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                           max_position_embeddings=64, num_local_experts=4, num_experts_per_tok=2)
cfg._attn_implementation = "eager"
model = AutoModelForCausalLM.from_config(cfg).eval()
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.02 * torch.randn_like(p))
ids = torch.randint(0, 128, (2, 8))

first = build_bridge_from_module(copy.deepcopy(model), ARCH, hf_config=model.config)
state = first.state_dict()
perturbed = copy.deepcopy(model)
with torch.no_grad():
    for p in perturbed.parameters():
        p.add_(0.5 * torch.randn_like(p))
second = build_bridge_from_module(perturbed, ARCH, hf_config=model.config)
second.load_state_dict(state, strict=True)
print("load_state_dict(strict=True) raised nothing")
with torch.no_grad():
    gap = float((second(ids) - first(ids)).abs().max())
truth = dict(model.named_parameters())
lost = sorted({n.replace("._original_component", "") for n, p in perturbed.named_parameters()
               if n.replace("._original_component", "") in truth
               and not torch.equal(p, truth[n.replace("._original_component", "")])})
print("HF parameters not restored:", lost)
print("state_dict() keys containing 'experts':", [k for k in state if "experts" in k])
print(f"logits after the round trip differ by {gap:.3g} (expected 0)")
sys.exit(1 if lost or gap > 0 else 0)
