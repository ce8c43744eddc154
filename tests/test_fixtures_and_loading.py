"""Fixtures build byte-identically from seeded generators; load_model passes HF arguments through."""

import hashlib

import pytest
import torch
import transformers

from pytest_invarlock.adapters import base
from pytest_invarlock.adapters.roles import HFCausalAdapter
from pytest_invarlock.errors import RemoteCodeRefused
from pytest_invarlock.hf_adapter.fixtures import CACHE_ENV, catalog, fixture_path, probe_path


def digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def test_two_builds_are_byte_identical(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "a"))
    first = {name: digest(fixture_path(name)) for name in catalog()}
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "b"))
    second = {name: digest(fixture_path(name)) for name in catalog()}
    assert first == second
    assert all("model.safetensors" in files for files in first.values())


def test_weights_come_from_the_seeded_generator_not_default_init(fixture_dir):
    model = HFCausalAdapter().load_model(fixture_dir("llama-gqa"), device="cpu")
    norm = model.model.norm.weight
    assert not torch.equal(norm, torch.ones_like(norm))  # default init would be exactly ones
    assert abs(float(model.lm_head.weight.std()) - 0.02) < 0.002


@pytest.mark.parametrize(("name", "tied"), [("gpt2", True), ("llama-gqa-tied", True),
                                            ("llama-gqa", False)])
def test_fixtures_have_the_catalogued_ties(fixture_dir, name, tied):
    model = HFCausalAdapter().load_model(fixture_dir(name), device="cpu")
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) is tied


def test_load_model_passes_hf_arguments_through(fixture_dir, monkeypatch):
    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(model_id, **kwargs):
        seen.update(kwargs)
        return real(model_id, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    model = HFCausalAdapter().load_model(
        fixture_dir("gpt2"), device="cpu", dtype=torch.float16, revision="main",
        cache_dir=None, low_cpu_mem_usage=True)
    # a local directory is loaded with local_files_only (never the Hub, no process-wide setting)
    assert seen == {"dtype": torch.float16, "revision": "main", "cache_dir": None,
                    "low_cpu_mem_usage": True, "trust_remote_code": False,
                    "local_files_only": True}
    assert next(model.parameters()).dtype == torch.float16 and not model.training


def test_remote_code_is_refused_without_the_opt_in():
    with pytest.raises(RemoteCodeRefused, match="INVARLOCK_ALLOW_REMOTE_CODE=1"):
        HFCausalAdapter().load_model(probe_path("remote-code"), trust_remote_code=True)


def test_remote_code_opt_in_reaches_transformers(monkeypatch):
    monkeypatch.setenv("INVARLOCK_ALLOW_REMOTE_CODE", "1")
    kwargs = {"trust_remote_code": True}
    base.guard_remote_code("x", kwargs)
    assert kwargs == {"trust_remote_code": True}


def test_auto_device_prefers_cuda_then_mps(monkeypatch):
    assert base.resolve_device("auto") == torch.device("cpu") or torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # no GPU here: mock it
    assert base.resolve_device("auto") == torch.device("cuda")
    assert base.resolve_device("cpu") == torch.device("cpu")


def test_hf_causal_refuses_an_encoder_decoder_checkpoint_but_takes_a_decoder_only_save(tmp_path):
    """A BART seq2seq checkpoint keeps only the shared embeddings: as BartForCausalLM its decoder
    embeddings and LM head would be random on every load. A BartForCausalLM save stores them."""
    bart = str(fixture_path("bart"))
    with pytest.raises(ValueError, match=r"encoder-decoder checkpoint.*hf_seq2seq loads it"):
        HFCausalAdapter().load_model(bart, device="cpu")
    config = transformers.AutoConfig.from_pretrained(bart, local_files_only=True)
    assert "encoder-decoder" in (HFCausalAdapter.declines_config(config) or "")
    decoder = transformers.BartForCausalLM.from_pretrained(bart, local_files_only=True)
    decoder.save_pretrained(tmp_path / "decoder")
    model = HFCausalAdapter().load_model(str(tmp_path / "decoder"), device="cpu")
    again = HFCausalAdapter().load_model(str(tmp_path / "decoder"), device="cpu")
    assert type(model).__name__ == "BartForCausalLM"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  again.state_dict().values(), strict=True))
