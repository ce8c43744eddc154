"""TL 4.3 cannot detect many supported architectures from a config without `architectures`.

sources/_hf_format.py:295-418 determine_architecture_from_hf_config falls back to a hand-written
model_type table (:311-410) that lacks the model_type of many architectures TL supports
(olmo2, vit, gemma3_text, qwen3_moe, falcon, ...): a config without `architectures` (built in code,
converted, or stripped) raises ValueError although the adapter exists. Where a model_type has several
supported head classes (hubert: HubertModel/HubertForCTC), the table can only name one of them.
Expected: every supported architecture's model_type resolves to a supported architecture.
"""
import os
import sys
os.environ["HF_HUB_OFFLINE"] = "1"
import transformers
from transformers import AutoConfig
import transformer_lens.model_bridge.sources  # noqa: F401
from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
from transformer_lens.model_bridge.sources._hf_format import determine_architecture_from_hf_config

ARCHS = sys.argv[1:] or """ASTForAudioClassification ArceeForCausalLM CohereForCausalLM DeepseekV2ForCausalLM
DeepseekV3ForCausalLM DeepseekV4ForCausalLM DeiTForImageClassification DeiTModel FalconForCausalLM FalconH1ForCausalLM
FlexOlmoForCausalLM GPTBigCodeForCausalLM Gemma3ForCausalLM Gemma3ForConditionalGeneration GptOssForCausalLM
GraniteForCausalLM GraniteMoeForCausalLM HrmTextForCausalLM HubertForCTC HunYuanDenseV1ForCausalLM Jais2ForCausalLM
JambaForCausalLM LagunaForCausalLM Lfm2ForCausalLM Lfm2MoeForCausalLM LlavaForConditionalGeneration
LlavaNextForConditionalGeneration LlavaOnevisionForConditionalGeneration Ministral3ForCausalLM
ModernBertDecoderForCausalLM NanoChatForCausalLM NemotronHForCausalLM Olmo2ForCausalLM Olmo3ForCausalLM OlmoForCausalLM
OlmoeForCausalLM Qwen3MoeForCausalLM Qwen3NextForCausalLM RecurrentGemmaForCausalLM RobertaForMaskedLM RwkvForCausalLM
VaultGemmaForCausalLM ViTForImageClassification ViTModel Wav2Vec2ForCTC Wav2Vec2Model XGLMForCausalLM YoutuForCausalLM
Zamba2ForCausalLM""".split()
missing, other = [], []
for arch in ARCHS:
    assert arch in SUPPORTED_ARCHITECTURES, arch
    mt = getattr(transformers, arch).config_class.model_type
    cfg = AutoConfig.for_model(mt)
    cfg.architectures = None
    try:
        got = determine_architecture_from_hf_config(cfg)
    except ValueError:
        missing.append(f"{arch} (model_type {mt!r})")
        continue
    if got != arch:
        other.append(f"{arch} (model_type {mt!r}) -> {got}")
print(f"{len(missing)}/{len(ARCHS)} supported architectures undetectable without `architectures`:")
for line in missing:
    print("  BAD", line)
print(f"{len(other)} detected as another architecture (a head the model_type cannot tell, or a wrong table entry):")
for line in other:
    print("  ->", line)
raise SystemExit(1 if missing else 0)
