"""state_dict() drops parameters of HF child modules that the adapter's mapping does not declare.

TransformerBridge._is_valid_bridge_path (transformer_bridge.py:4509) walks a key through the mapping and
rejects it as soon as a path segment is not a declared submodule (meant to skip duplicates of wrapped
modules). A child that NO bridge wraps is then lost: BitNet's attn_sub_norm / ffn_sub_norm (used in forward),
Apertus' XIELU act_fn.alpha_p/alpha_n/beta/eps. strict=True does not notice (missing keys are computed with
the same filter). Expected: every HF tensor restored and the logits equal. Exit 1 if the defect shows.
"""
import copy, os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformer_lens.model_bridge.sources import build_bridge_from_module

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
bad = []
for arch, mt in (("BitNetForCausalLM", "bitnet"), ("ApertusForCausalLM", "apertus")):
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(mt, **COMMON)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(0, 128, (2, 8))
    first = build_bridge_from_module(copy.deepcopy(model), arch, hf_config=model.config)
    state = first.state_dict()
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        for t in perturbed.state_dict(keep_vars=True).values():
            if t.is_floating_point():
                t.add_(0.5 * torch.randn_like(t))
    second = build_bridge_from_module(perturbed, arch, hf_config=model.config)
    second.load_state_dict(state, strict=True)
    truth = model.state_dict()
    now = {k.replace("._original_component", ""): v for k, v in perturbed.state_dict().items()}
    lost = sorted(k for k, v in truth.items() if v.is_floating_point() and not torch.equal(now[k], v))
    with torch.no_grad():
        gap = float((second(ids) - first(ids)).abs().max())
    print(f"{arch}: strict=True load raised nothing; HF tensors not restored: {lost}; "
          f"logits differ by {gap:.3g} (expected 0)")
    bad += [arch] if lost or gap > 0 else []
sys.exit(1 if bad else 0)
