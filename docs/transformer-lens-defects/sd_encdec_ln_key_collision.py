"""Encoder-decoder (BART): state_dict() gives two decoder layer norms one key; loading writes the wrong one.

TransformerBridge._normalize_bridge_key_to_hf maps block-level TL names (ln1/ln2/ln3) to HF names with ONE
dict for all block lists: the encoder's ln2 is `final_layer_norm`, the decoder's ln2 is
`encoder_attn_layer_norm`, the decoder's ln3 is `final_layer_norm`. So the decoder's ln2 and ln3 both become
`decoder_blocks.N.final_layer_norm.*`; state_dict() keeps the first (the cross-attention norm's value) and
load_state_dict() writes that value into BOTH norms. Which norm wins depends on set iteration order
(PYTHONHASHSEED). Expected: every HF tensor restored and the logits equal. Exit 1 if the defect shows.
"""
import copy, os, subprocess, sys
os.environ["HF_HUB_OFFLINE"] = "1"
if "--one" not in sys.argv:  # the outcome depends on str hashing: run under a few PYTHONHASHSEEDs
    bad = []
    for seed in ("0", "1", "2", "3"):
        run = subprocess.run([sys.executable, __file__, "--one"], env={**os.environ, "PYTHONHASHSEED": seed},
                             capture_output=True, text=True)
        print(f"--- PYTHONHASHSEED={seed} (exit {run.returncode})\n{run.stdout.strip()}")
        bad += [seed] if run.returncode else []
    print("defect shows under PYTHONHASHSEED in", bad)
    sys.exit(1 if bad else 0)
import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM
from transformer_lens.model_bridge.sources import build_bridge_from_module

ARCH = "BartForConditionalGeneration"
torch.manual_seed(0)
cfg = AutoConfig.for_model("bart", d_model=64, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                           decoder_ffn_dim=128, vocab_size=128, max_position_embeddings=64)
cfg._attn_implementation = "eager"
model = AutoModelForSeq2SeqLM.from_config(cfg).eval()
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.1 * torch.randn_like(p))
ids, dec = torch.randint(4, 128, (2, 8)), torch.randint(4, 128, (2, 5))

first = build_bridge_from_module(copy.deepcopy(model), ARCH, hf_config=model.config)
state = first.state_dict()
layer = model.model.decoder.layers[0]
v = state["decoder_blocks.0.final_layer_norm.weight"]
print("state_dict()['decoder_blocks.0.final_layer_norm.weight'] equals HF decoder final_layer_norm:",
      torch.equal(v, layer.final_layer_norm.weight), "| equals encoder_attn_layer_norm:",
      torch.equal(v, layer.encoder_attn_layer_norm.weight))
print("decoder_blocks.0 norm keys:", [k for k in state if k.startswith("decoder_blocks.0.") and "norm" in k])
perturbed = copy.deepcopy(model)
with torch.no_grad():
    for p in perturbed.parameters():
        p.add_(0.5 * torch.randn_like(p))
second = build_bridge_from_module(perturbed, ARCH, hf_config=model.config)
second.load_state_dict(state, strict=True)
truth = dict(model.named_parameters())
lost = sorted({n.replace("._original_component", "") for n, p in perturbed.named_parameters()
               if n.replace("._original_component", "") in truth
               and not torch.equal(p, truth[n.replace("._original_component", "")])})
with torch.no_grad():
    gap = float((second(ids, decoder_input_ids=dec) - first(ids, decoder_input_ids=dec)).abs().max())
print("HF parameters not restored:", lost)
print(f"logits after the round trip differ by {gap:.3g} (expected 0)")
sys.exit(1 if lost or gap > 0 else 0)
