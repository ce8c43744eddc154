"""CodeGen: TL's CodeGen attention bridge reads CodeGenAttention.embed_positions, which transformers 5.24 no longer has.

transformers (5.24 here; TL 4.3 declares transformers>=5.9.0) moved the sinusoidal table to a model-level
CodeGenRotaryEmbedding (`model.transformer.rotary_emb.embed_positions`); TL's
generalized_components/codegen_attention.py:306 still reads `self.original_component.embed_positions`.
Expected: the bridge's logits equal the HF model's. Exit 1 if the forward raises or differs.
"""
import copy, os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import torch, transformers
from transformers import AutoConfig, AutoModelForCausalLM
from transformer_lens.model_bridge.sources import build_bridge_from_module

torch.manual_seed(0)
cfg = AutoConfig.for_model("codegen", n_embd=64, n_layer=2, n_head=4, rotary_dim=8, vocab_size=128, n_positions=64)
cfg._attn_implementation = "eager"
model = AutoModelForCausalLM.from_config(cfg).eval()
ids = torch.randint(0, 128, (2, 8))
with torch.no_grad():
    want = model(ids).logits
attn = model.transformer.h[0].attn
print("transformers", transformers.__version__, "| CodeGenAttention has embed_positions:",
      hasattr(attn, "embed_positions"), "| model.transformer.rotary_emb:",
      type(getattr(model.transformer, "rotary_emb", None)).__name__)
bridge = build_bridge_from_module(copy.deepcopy(model), "CodeGenForCausalLM", hf_config=model.config)
try:
    with torch.no_grad():
        gap = float((bridge(ids) - want).abs().max())
    print(f"bridge logits differ from HF by {gap:.3g}")
    sys.exit(1 if gap > 1e-5 else 0)
except Exception as exc:
    print(f"bridge forward raised {type(exc).__name__}: {exc} (expected the HF logits)")
    sys.exit(1)
