"""TL 4.3 convert_hf_key_to_tl_key only converts inside lists named blocks/L_blocks/H_blocks.

architecture_adapter.py:908-914 treats every other top-level component (encoder_blocks and
decoder_blocks of every encoder-decoder, a vision_encoder holding its own blocks) as a plain
prefix: the prefix is swapped and the rest of the key is kept in HF names, so
'model.encoder.layers.0.self_attn.k_proj.weight' becomes 'encoder_blocks.0.self_attn.k_proj.weight'
instead of 'encoder_blocks.0.attn.k.weight' (which translate_transformer_lens_path does map back).
"""
import os
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM
import transformer_lens.model_bridge.sources  # noqa: F401
from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_config_from_hf
from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory

hf_cfg = AutoConfig.for_model("bart", d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                              decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=128)
with torch.device("meta"):
    keys = set(AutoModelForSeq2SeqLM.from_config(hf_cfg).state_dict())
a = ArchitectureAdapterFactory.select_architecture_adapter(
    build_bridge_config_from_hf(hf_cfg, "BartForConditionalGeneration", "external", torch.float32))
bad = 0
for tl_comp in ("encoder_blocks.0.attn.k", "decoder_blocks.0.mlp.in"):
    hf_comp = a.translate_transformer_lens_path(tl_comp)          # TL -> HF works
    key = f"{hf_comp}.weight"
    assert key in keys, key
    got = a.convert_hf_key_to_tl_key(key)                        # HF -> TL does not
    want = f"{tl_comp}.weight"
    bad += got != want
    print(f"{'ok ' if got == want else 'BAD'} translate({tl_comp!r}) = {hf_comp!r}; "
          f"convert_hf_key_to_tl_key({key!r}) = {got!r}" + ("" if got == want else f" (expected {want!r})"))
raise SystemExit(1 if bad else 0)
