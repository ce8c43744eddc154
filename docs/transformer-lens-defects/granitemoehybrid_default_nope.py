"""GraniteMoeHybrid with HF's default position_embedding_type (None = no RoPE): the bridge's forward raises.

HF builds `model.rotary_emb = None` unless config.position_embedding_type == "rope". TL's
build_bridge_config_from_hf copies passthrough attributes only when they are not None
(_bridge_builder.py:204), so the adapter's `getattr(cfg, "position_embedding_type", "rope")`
(granite_moe_hybrid.py:49) sees "rope" and maps `rotary_emb -> model.rotary_emb`, which does not exist.
Expected: the bridge's logits equal the HF model's for every value HF accepts. Exit 1 if the defect shows.
"""
import copy, os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformer_lens.model_bridge.sources import build_bridge_from_module

ARCH = "GraniteMoeHybridForCausalLM"
bad = []
for pos in (None, "nope", "rope"):
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("granitemoehybrid", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                               max_position_embeddings=64, num_local_experts=0, shared_intermediate_size=128,
                               layer_types=["mamba", "attention"], mamba_n_heads=8, mamba_d_head=16,
                               mamba_d_state=8, mamba_n_groups=1, position_embedding_type=pos)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.randint(0, 128, (2, 8))
    with torch.no_grad():
        want = model(ids).logits
    bridge = build_bridge_from_module(copy.deepcopy(model), ARCH, hf_config=model.config)
    try:
        with torch.no_grad():
            gap = float((bridge(ids) - want).abs().max())
        print(f"position_embedding_type={pos!r}: HF rotary_emb={type(model.model.rotary_emb).__name__}; "
              f"bridge logits differ from HF by {gap:.3g}")
        bad += [pos] if gap > 1e-5 else []
    except Exception as exc:
        print(f"position_embedding_type={pos!r}: HF rotary_emb={type(model.model.rotary_emb).__name__}; "
              f"bridge forward raised {type(exc).__name__}: {exc} (expected the HF logits)")
        bad.append(pos)
print("failing values:", bad)
sys.exit(1 if bad else 0)
