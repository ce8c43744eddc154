"""TransformerBridge.state_dict() drops Mamba's A_log and D, and load_state_dict(strict=True) does not notice.

Expected: a bridge's state_dict(), loaded with strict=True into a bridge over a perturbed copy of the same
model, restores every weight, so the second bridge's logits equal the first's.
Got: mixer.A_log / mixer.D (nn.Parameters of the HF MambaMixer, used by its forward) have no key, strict=True
raises nothing, the logits stay different. Exit 1 when the defect is present.
"""
import copy, os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformer_lens.model_bridge.sources import build_bridge_from_module

ARCH, TYPE = "MambaForCausalLM", "mamba"
torch.manual_seed(0)
cfg = AutoConfig.for_model(TYPE, hidden_size=64, num_hidden_layers=2, vocab_size=128, state_size=8)
model = AutoModelForCausalLM.from_config(cfg).eval()
ids = torch.randint(0, 128, (2, 8))

first = build_bridge_from_module(copy.deepcopy(model), ARCH, hf_config=model.config)
state = first.state_dict()
perturbed = copy.deepcopy(model)
with torch.no_grad():
    for p in perturbed.parameters():
        p.add_(0.5 * torch.randn_like(p))
second = build_bridge_from_module(perturbed, ARCH, hf_config=model.config)
result = second.load_state_dict(state, strict=True)  # TL doc: strict "enforce that the keys match state_dict()"
print("load_state_dict(strict=True) raised nothing; missing:", len(result.missing_keys),
      "unexpected:", len(result.unexpected_keys))
with torch.no_grad():
    gap = float((second(ids) - first(ids)).abs().max())
truth = dict(model.named_parameters())
lost = [n for n, p in perturbed.named_parameters()
        if n.replace("._original_component", "") in truth
        and not torch.equal(p, truth[n.replace("._original_component", "")])]
lost = sorted(set(n.replace("._original_component", "") for n in lost))
print("HF parameters not restored:", lost)
print("keys of state_dict() naming A_log/D:", [k for k in state if k.endswith(("A_log", ".D"))])
print(f"logits after the round trip differ by {gap:.3g} (expected 0)")
sys.exit(1 if lost or gap > 0 else 0)
