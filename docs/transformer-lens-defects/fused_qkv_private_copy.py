"""Fused-QKV bridges (GPT-NeoX, BLOOM, Falcon, MPT) compute with private copies of q/k/v.

After build_bridge_from_module, the bridge's q/k/v are new tensors cut from the HF fused weight
(`query_key_value` / `Wqkv`) at bridge time. Consequences, per architecture:
 (1) an in-place edit of the HF fused weight moves the HF model's logits but not the bridge's;
 (2) state_dict() has no key for the fused weight, so after a round trip into a bridge over a perturbed copy
     the wrapped HF model still holds the perturbed fused weight (what original_model.state_dict() /
     save_pretrained exports) while the bridge computes with the restored copies.
Expected: (1) bridge moves as the HF model does; (2) the HF fused weight restored. Exit 1 if any shows.
"""
import copy, os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformer_lens.model_bridge.sources import build_bridge_from_module

CASES = {  # arch: (model_type, config overrides, fused leaf)
    "GPTNeoXForCausalLM": ("gpt_neox", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4), "query_key_value.weight"),
    "BloomForCausalLM": ("bloom", dict(hidden_size=64, n_head=4), "query_key_value.weight"),
    "FalconForCausalLM": ("falcon", dict(hidden_size=64, num_attention_heads=4, new_decoder_architecture=False, multi_query=True), "query_key_value.weight"),
    "MptForCausalLM": ("mpt", dict(d_model=64, n_heads=4), "Wqkv.weight"),
}
bad = []
for arch, (mt, kw, leaf) in CASES.items():
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(mt, num_hidden_layers=2, vocab_size=128, **kw)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(0, 128, (2, 8))
    name = next(n for n, _ in model.named_parameters() if n.endswith(leaf))
    wrapped = copy.deepcopy(model)
    bridge = build_bridge_from_module(wrapped, arch, hf_config=model.config)
    twin = copy.deepcopy(model)
    live = {n.replace("._original_component", ""): p for n, p in wrapped.named_parameters(remove_duplicate=False)}
    with torch.no_grad():
        b0, t0 = bridge(ids), twin(ids).logits
        delta = 0.5 * torch.randn_like(live[name])
        live[name].add_(delta); twin.get_parameter(name).add_(delta)
        moved_b, moved_t = float((bridge(ids) - b0).abs().max()), float((twin(ids).logits - t0).abs().max())
        live[name].sub_(delta)
    state = bridge.state_dict()
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.5 * torch.randn_like(p))
    second = build_bridge_from_module(perturbed, arch, hf_config=model.config)
    second.load_state_dict(state, strict=True)
    fused_now = {n.replace("._original_component", ""): p for n, p in perturbed.named_parameters(remove_duplicate=False)}[name]
    with torch.no_grad():
        gap = float((second(ids) - bridge(ids)).abs().max())
    stale = float((fused_now.detach() - model.get_parameter(name).detach()).abs().max())
    keyed = [k for k in state if "query_key_value" in k or "Wqkv" in k]
    print(f"{arch}: editing {name} in place moves HF logits by {moved_t:.3g}, bridge logits by {moved_b:.3g} "
          f"(expected equal) | state_dict keys for the fused weight: {keyed} | after the strict round trip the "
          f"bridge logits differ by {gap:.3g} but the HF fused weight is off by {stale:.3g} (expected 0)")
    if abs(moved_b - moved_t) > 1e-4 or stale > 0:
        bad.append(arch)
print("defect present in:", bad)
sys.exit(1 if bad else 0)
