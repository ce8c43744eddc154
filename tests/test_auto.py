"""hf_auto: the selection table over every fixture and every quantization signal, and delegation."""

import json

import pytest
import torch
import transformers

from pytest_invarlock.adapters import auto, roles
from pytest_invarlock.hf_adapter.fixtures import catalog, fixture_path

ROLE_ADAPTER = {"causal": "hf_causal", "mlm": "hf_mlm", "seq2seq": "hf_seq2seq",
                "multimodal": "hf_multimodal"}


@pytest.mark.parametrize("name", sorted(catalog()))
def test_every_fixture_selects_its_role_adapter(name):
    expected = ROLE_ADAPTER[catalog()[name].role]
    assert auto.select_for_id(fixture_path(name)) == expected
    config = json.loads((fixture_path(name) / "config.json").read_text())
    assert auto.select_for_config(config) == expected


@pytest.mark.parametrize(("method", "adapter"), sorted(auto.QUANT_METHODS.items()))
def test_every_quant_method_string_selects_its_adapter(method, adapter):
    config = {"model_type": "llama", "quantization_config": {"quant_method": method}}
    assert auto.select_for_config(config) == adapter


@pytest.mark.parametrize("flag", ["load_in_8bit", "load_in_4bit"])
def test_bnb_flags_select_hf_bnb_inside_and_outside_quantization_config(flag):
    assert auto.select_for_config({"model_type": "llama", flag: True}) == "hf_bnb"
    assert auto.select_for_config({"model_type": "llama",
                                   "quantization_config": {flag: True}}) == "hf_bnb"


def _real(class_name, **kwargs):
    """Instantiate transformers' own config class; skip __init__ when its backend is absent."""
    cls = getattr(transformers, class_name)
    try:
        return cls(**kwargs)
    except (ImportError, ValueError):
        return object.__new__(cls)  # the real class, without the backend its __init__ checks


@pytest.mark.parametrize(("class_name", "kwargs", "adapter"), [
    ("AwqConfig", {"bits": 4}, "hf_awq"),
    ("GPTQConfig", {"bits": 4}, "hf_gptq"),
    ("BitsAndBytesConfig", {"load_in_4bit": True}, "hf_bnb"),
    ("QuantoConfig", {}, "hf_quanto"),
    ("TorchAoConfig", {"quant_type": "int8_weight_only"}, "hf_torchao"),
    ("HqqConfig", {}, "hf_hqq"),
    ("CompressedTensorsConfig", {}, "hf_ct"),
])
def test_real_quantization_config_classes_select_their_adapter(class_name, kwargs, adapter):
    config = transformers.LlamaConfig()
    config.quantization_config = _real(class_name, **kwargs)
    assert auto.select_for_config(config) == adapter


def test_quantization_wins_over_the_role():
    config = {"model_type": "bert", "quantization_config": {"quant_method": "gptq"}}
    assert auto.select_for_config(config) == "hf_gptq"


def test_model_attributes_and_module_types_select_hf_bnb(fixture_dir):
    model = auto.HFAutoAdapter().load_model(fixture_dir("gpt2"), device="cpu")
    assert auto.select_for_model(model) == "hf_causal"
    model.is_loaded_in_8bit = True
    assert auto.select_for_model(model) == "hf_bnb"
    del model.is_loaded_in_8bit
    linear8bit = type("Linear8bitLt", (torch.nn.Linear,), {})  # the class name is the signal
    model.transformer.h[0].mlp.c_fc = linear8bit(4, 4)
    assert auto.select_for_model(model) == "hf_bnb"
    assert type(auto.HFAutoAdapter().delegate(model)).__name__ == "HFBnbAdapter"
    assert not roles.HFCausalAdapter().can_handle(model)  # a full-precision adapter refuses it


@pytest.mark.parametrize(("model_id", "adapter"), [
    ("meta-llama/Llama-2-7b-hf", "hf_causal"), ("bert-base-uncased", "hf_mlm"),
    ("sentence-transformers/all-MiniLM-L6-v2", "hf_mlm"), ("google/flan-t5-base", "hf_seq2seq"),
    ("facebook/bart-large", "hf_seq2seq"), ("llava-hf/llava-1.5-7b-hf", "hf_multimodal"),
    ("some/unknown-model", "hf_causal"),
])
def test_remote_ids_fall_back_to_name_heuristics(model_id, adapter):
    assert auto.select_for_id(model_id) == adapter


def test_hf_auto_delegates_every_method(fixture_dir):
    adapter = auto.HFAutoAdapter()
    for method in ("load_model", "describe", "snapshot", "restore", "snapshot_chunked",
                   "restore_chunked", "can_handle"):
        assert hasattr(adapter, method)
    model = adapter.load_model(fixture_dir("t5"), device="cpu")
    assert type(model).__name__ == "T5ForConditionalGeneration"
    assert adapter.describe(model)["n_layer"] == 4


def test_unavailable_quantized_adapter_says_what_to_do():
    with pytest.raises(auto.AdapterUnavailable, match=r"hf_exl2.*--invarlock-adapter"):
        auto.concrete("hf_exl2")  # a name hf_auto could only get from a future quant method
