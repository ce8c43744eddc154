"""TL 4.3 SwitchTransformers adapter cannot boot a safetensors checkpoint (transformers' default save format).

supported_architectures/switch_transformers.py:82-86 prepare_loading() does
model_kwargs.setdefault("use_safetensors", False) (meant for the Hub's google/switch-base-* repos,
which ship pytorch_model.bin only), so from_pretrained on a directory written by save_pretrained
(model.safetensors) raises OSError 'no file named model.safetensors, or pytorch_model.bin'.
Expected: boot the saved checkpoint (e.g. only disable safetensors when no .safetensors file exists).
"""
import os
import tempfile
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, PreTrainedTokenizerFast, SwitchTransformersForConditionalGeneration
import transformer_lens.model_bridge.sources as sources
from transformer_lens.model_bridge import TransformerBridge

cfg = AutoConfig.for_model("switch_transformers", d_model=64, d_ff=128, d_kv=16, num_layers=2, num_decoder_layers=2,
                           num_heads=4, vocab_size=128, num_experts=4, encoder_sparse_step=1, decoder_sparse_step=1)
cfg._attn_implementation = "eager"
torch.manual_seed(0)
hf = SwitchTransformersForConditionalGeneration(cfg).eval()
ids = torch.randint(0, 128, (1, 6))
dec = torch.randint(0, 128, (1, 4))
ok = True
with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    tk = Tokenizer(models.WordLevel({"<unk>": 0, **{f"t{i}": i for i in range(1, 128)}}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="t1", eos_token="t2",
                            pad_token="t3").save_pretrained(d)
    print("saved:", sorted(os.listdir(d)))
    with torch.no_grad():
        want = hf(input_ids=ids, decoder_input_ids=dec).logits
    try:
        b = TransformerBridge.boot_transformers(d, device="cpu")
        b.eval()
        with torch.no_grad():
            got = b(ids, decoder_input_ids=dec)
        got = getattr(got, "logits", got)
        print(f"boot ok ({type(b.adapter).__name__}); max |booted - HF| = {float((got - want).abs().max()):.2e}")
        ok = torch.allclose(got, want, atol=1e-4)
    except Exception as exc:
        print(f"BAD boot raised {type(exc).__name__}: {exc}")
        ok = False
raise SystemExit(0 if ok else 1)
