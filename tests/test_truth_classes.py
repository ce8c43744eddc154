"""Truth for every class transformers loads a bundled fixture's family as, not the fixture's alone.

For each fixture and each model class that transformers' Auto mappings give its model_type (base
model, causal LM, masked LM, seq2seq LM, sequence and token classification, image-text-to-text),
the model is built from the fixture's config and ``derive()`` must agree with layer counts, heads
and MLP widths computed here from the raw config dict, without transformers' config classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
import transformers
from torch import nn
from transformers.models.auto import modeling_auto

from pytest_invarlock.adapters import auto, roles
from pytest_invarlock.errors import CheckNotApplicable, TruthUnavailable
from pytest_invarlock.hf_adapter import truth
from pytest_invarlock.hf_adapter.checks import CheckContext, describe
from pytest_invarlock.hf_adapter.fixtures import catalog

transformers.logging.set_verbosity_error()  # BertLMHeadModel without is_decoder warns on build

MAPPINGS = ("MODEL_MAPPING_NAMES", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
            "MODEL_FOR_MASKED_LM_MAPPING_NAMES", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
            "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
            "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
            "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES")
#: Classes outside the Auto mappings that load a family too.
EXTRA_CLASSES: dict[str, tuple[str, ...]] = {"t5": ("T5EncoderModel",)}
#: Config overrides that turn an encoder family's LM head into a real decoder.
DECODER_OVERRIDES: dict[str, Any] = {"is_decoder": True}
#: Classes of an encoder-decoder family that hold one of its stacks only.
ONE_STACK = {"BartForCausalLM": "decoder", "T5EncoderModel": "encoder",
             "T5ForTokenClassification": "encoder"}

CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel")
Case = tuple[str, str, bool]  # (fixture, class name, configured as a decoder)


def _cases() -> list[Case]:
    cases: set[Case] = set()
    for name, fixture in catalog().items():
        family = fixture.config["model_type"]
        classes = {getattr(modeling_auto, m)[family] for m in MAPPINGS
                   if family in getattr(modeling_auto, m)}
        for cls in classes | set(EXTRA_CLASSES.get(family, ())):
            cases.add((name, cls, False))
            if family in {"bert", "roberta", "electra"} and cls.endswith(CAUSAL_HEADS):
                cases.add((name, cls, True))
    return sorted(cases)


CASES = _cases()
IDS = [f"{n}-{c}{'-decoder' if d else ''}" for n, c, d in CASES]


@cache
def build(name: str, cls: str, decoder: bool) -> nn.Module:
    """Instantiate ``cls`` from fixture ``name``'s config (random weights; structure only)."""
    settings = {**catalog()[name].config, **(DECODER_OVERRIDES if decoder else {})}
    config = transformers.AutoConfig.for_model(**settings)
    return getattr(transformers, cls)(config).eval()


@dataclass(frozen=True)
class Expected:
    heads: list[int]
    kv_heads: list[int]
    mlp: list[int]
    attention: str


def _widths(value: int | list[int], n: int) -> list[int]:
    return list(value) if isinstance(value, list) else [value] * n


def expected(config: dict[str, Any], cls: str, decoder: bool) -> Expected:
    """Compute the per-layer structure from the fixture's raw config (transformers' defaults)."""
    c = config.get("text_config", config)
    family = c["model_type"]
    if family in {"t5", "bart"}:
        return _seq2seq(c, ONE_STACK.get(cls))
    if family == "gpt2":
        n, heads, kv = c["n_layer"], c["n_head"], c["n_head"]
        mlp = [c.get("n_inner") or 4 * c["n_embd"]] * n
    elif family == "distilbert":
        n, heads, kv = c["n_layers"], c["n_heads"], c["n_heads"]
        mlp = [c["hidden_dim"]] * n
    else:
        n, heads = c["num_hidden_layers"], c["num_attention_heads"]
        kv = c.get("num_key_value_heads") or heads
        if family == "falcon":
            kv = c["num_kv_heads"] if c.get("new_decoder_architecture") else heads
            mlp = [c.get("ffn_hidden_size") or 4 * c["hidden_size"]] * n
        elif family == "opt":
            mlp = [c["ffn_dim"]] * n
        elif family == "qwen3_moe":
            mlp = [c["intermediate_size"] if i in c["mlp_only_layers"]
                   or (i + 1) % c["decoder_sparse_step"] else c["moe_intermediate_size"]
                   for i in range(n)]
        else:
            mlp = _widths(c["intermediate_size"], n)
    if family in {"bert", "roberta", "electra", "deberta-v2", "distilbert", "albert"}:
        attention = "causal" if decoder else "bidirectional"
    else:
        attention = "gqa" if kv != heads else "causal"
    return Expected([heads] * n, [kv] * n, mlp, attention)


def _seq2seq(c: dict[str, Any], only: str | None) -> Expected:
    heads, mlp = [], []
    for side in ("encoder", "decoder"):
        if only not in (None, side):
            continue
        if c["model_type"] == "t5":
            n = c["num_layers"] if side == "encoder" else c.get("num_decoder_layers",
                                                                c["num_layers"])
            h, width = c["num_heads"], c["d_ff"]
        else:
            n, h = c[f"{side}_layers"], c[f"{side}_attention_heads"]
            width = c[f"{side}_ffn_dim"]
        heads += [h] * n
        mlp += [width] * n
    attention = {None: "encoder-decoder", "encoder": "bidirectional", "decoder": "causal"}[only]
    return Expected(heads, heads, mlp, attention)


def test_every_bundled_family_is_covered_by_several_classes() -> None:
    families = {catalog()[n].config["model_type"] for n, _, _ in CASES}
    assert families == {f.config["model_type"] for f in catalog().values()}
    classes = {c for _, c, _ in CASES}
    assert {"BartForCausalLM", "GPT2Model", "LlamaModel", "BertModel", "OPTModel",
            "T5EncoderModel", "LlavaModel", "LlamaForSequenceClassification",
            "BertForTokenClassification"} <= classes


@pytest.mark.parametrize(("name", "cls", "decoder"), CASES, ids=IDS)
def test_truth_is_derived_for_every_class(name: str, cls: str, decoder: bool) -> None:
    model = build(name, cls, decoder)
    found = truth.derive(model)
    want = expected(catalog()[name].config, cls, decoder)
    assert found.model_class == cls
    assert found.n_layer == len(want.heads)
    assert list(found.heads) == want.heads
    assert list(found.kv_heads) == want.kv_heads
    assert list(found.mlp_dims) == want.mlp
    assert want.attention in found.attention_types
    config = catalog()[name].config
    experts = config.get("num_local_experts") or config.get("num_experts")
    assert found.experts == experts
    if config.get("layer_types"):
        assert found.layer_types == tuple(config["layer_types"])
        assert found.sliding_window == config["sliding_window"]


@pytest.mark.parametrize(("name", "cls", "decoder"), CASES, ids=IDS)
def test_reference_adapters_describe_every_class_they_accept(name: str, cls: str,
                                                             decoder: bool) -> None:
    model = build(name, cls, decoder)
    adapters: list[Any] = [roles.HFCausalAdapter(), roles.HFMLMAdapter(),
                           roles.HFSeq2SeqAdapter(), roles.HFMultimodalAdapter(),
                           auto.HFAutoAdapter()]
    for adapter in [a for a in adapters if a.can_handle(model)]:
        for check in describe.CHECKS:
            try:
                check(adapter, model, CheckContext(adapter.name, name, reference=True))
            except CheckNotApplicable:
                pass
        arch = adapter.describe(model)["architecture"]
        found = truth.derive(model)
        assert arch.get("layer_types") == (list(found.layer_types) if found.layer_types else None)
        assert arch.get("sliding_window") == found.sliding_window


def test_hf_causal_takes_decoder_only_variants_and_refuses_encoders() -> None:
    causal = roles.HFCausalAdapter()
    assert causal.can_handle(build("bart", "BartForCausalLM", False))
    assert causal.can_handle(build("bert", "BertLMHeadModel", True))
    assert not causal.can_handle(build("bert", "BertLMHeadModel", False))  # attends both ways
    assert not causal.can_handle(build("bart", "BartForConditionalGeneration", False))
    desc = causal.describe(build("bart", "BartForCausalLM", False))
    assert desc["mlp_dims"] == [80, 80] and desc["architecture"]["attention_type"] == "causal"


def test_unknown_family_raises() -> None:
    config = transformers.AutoConfig.for_model("gpt_bigcode", n_embd=32, n_layer=1, n_head=2,
                                               n_positions=16, vocab_size=64)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(TruthUnavailable, match="no truth rule for model_type 'gpt_bigcode'"):
        truth.derive(model)
    with pytest.raises(TruthUnavailable, match=r"has no \.config"):
        truth.derive(nn.Linear(2, 2))


@pytest.mark.parametrize(("name", "cls", "stack"), [
    ("t5", "T5ForConditionalGeneration", "decoder"), ("t5", "T5Model", "encoder"),
    ("bart", "BartModel", "decoder"), ("bart", "BartForConditionalGeneration", "encoder"),
])
def test_encoder_decoder_lacking_a_stack_raises(name: str, cls: str, stack: str) -> None:
    settings = catalog()[name].config
    model = getattr(transformers, cls)(transformers.AutoConfig.for_model(**settings))
    holder = getattr(getattr(model, "model", model), stack)
    setattr(holder, "block" if name == "t5" else "layers", nn.ModuleList())  # the stack is gone
    assert model.config.is_encoder_decoder
    with pytest.raises(TruthUnavailable, match=f"holds no {stack} layers"):
        truth.derive(model)


def _fresh(name: str, cls: str = "AutoModelForCausalLM") -> Any:
    config = transformers.AutoConfig.for_model(**catalog()[name].config)
    return getattr(transformers, cls).from_config(config)


def test_checkpoint_and_config_disagreeing_raise() -> None:
    model = _fresh("llama-gqa")
    model.config.num_hidden_layers = 1
    with pytest.raises(TruthUnavailable, match="more than the 1 layers"):
        truth.derive(model)
    model = _fresh("gemma3n-text")
    model.config.num_kv_shared_layers = 0  # layers 2 and 3 have no K/V projections of their own
    with pytest.raises(TruthUnavailable, match=r"layers\.2\.self_attn\.k_proj\.weight' is missing"):
        truth.derive(model)
    model = _fresh("gemma3-text-sliding")
    model.config.layer_types = ["full_attention"] * 4
    with pytest.raises(TruthUnavailable, match=r"layer_types\[0\] is 'full_attention'"):
        truth.derive(model)


def test_heterogeneous_fixtures_are_derived_layer_by_layer() -> None:
    moe = truth.derive(_fresh("qwen3-moe-interleaved"))
    assert moe.mlp_dims == (128, 32, 128, 32) and moe.experts == 4
    sliding = truth.derive(_fresh("gemma3-text-sliding"))
    assert sliding.layer_types == ("sliding_attention", "full_attention") * 2
    assert sliding.sliding_window == 8
    widths = truth.derive(_fresh("gemma3n-text"))
    assert widths.mlp_dims == (96, 128, 64, 160) and widths.kv_heads == (2, 2, 2, 2)
