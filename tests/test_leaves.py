"""The suite's deep view of state: every plain tensor the forward reads, quantized or not.

The full-precision half runs everywhere; each backend's half runs where the backend is
installed (the cpu-quant lane's environment), and is skipped with the install line otherwise.
"""

import importlib.util

import pytest
import torch

from pytest_invarlock.hf_adapter import leaves, state
from pytest_invarlock.hf_adapter.fixtures import fixture_path


def load_fixture_model(name):
    from pytest_invarlock.adapters.auto import HFAutoAdapter

    return HFAutoAdapter().load_model(str(fixture_path(name)), device="cpu")

IDS = torch.arange(16).reshape(2, 8)


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa-tied", "t5", "bert"])
def test_the_leaves_of_a_full_precision_model_are_its_parameters_and_buffers(name):
    model = load_fixture_model(name)
    found = leaves.leaves(model)
    now = state.named_tensors(model)
    assert set(found) == set(now)
    assert all(found[n].tensor is now[n][0] for n in now)
    assert {leaf.kind for leaf in found.values()} <= {"parameter", "buffer"}


def test_perturb_changes_every_leaf_and_restore_puts_every_bit_back_in_place():
    model = load_fixture_model("llama-gqa-tied")
    before, storages = _logits(model), {n: leaf.tensor.data_ptr()
                                        for n, leaf in leaves.leaves(model).items()}
    captured = leaves.capture(model)
    state.perturb(model, seed=1)
    assert len(leaves.diff(model, captured)) == len(captured)  # every leaf changed
    leaves.restore(model, captured)
    assert leaves.diff(model, captured) == []
    assert torch.equal(_logits(model), before)
    assert {n: leaf.tensor.data_ptr() for n, leaf in leaves.leaves(model).items()} == storages


def test_restore_refuses_a_capture_of_another_model_and_changes_nothing():
    model, other = load_fixture_model("llama-gqa-tied"), load_fixture_model("gpt2")
    captured = leaves.capture(model)
    with pytest.raises(ValueError, match="no such leaf"):
        leaves.restore(model, leaves.capture(other))
    assert leaves.diff(model, captured) == []


def _quantized(backend):
    """Load llama-gqa quantized by ``backend`` at load time (skip when it is not installed)."""
    module = {"torchao": "torchao", "quanto": "optimum.quanto", "bnb8": "bitsandbytes"}[backend]
    try:  # the whole dotted name: `optimum` alone (the gptq extra's) is not optimum-quanto
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        pytest.skip(f"{module} is not installed (the cpu-quant lane installs it)")
    import transformers

    if backend == "torchao":
        from torchao.quantization import Int8WeightOnlyConfig

        config = transformers.TorchAoConfig(Int8WeightOnlyConfig())
    elif backend == "quanto":
        config = transformers.QuantoConfig(weights="int8")
    else:
        config = transformers.BitsAndBytesConfig(load_in_8bit=True)
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(fixture_path("llama-gqa")), quantization_config=config, local_files_only=True)


@pytest.mark.parametrize("backend, hidden", [("torchao", "inner"), ("quanto", "inner"),
                                             ("bnb8", "quant_state")])
def test_the_leaves_of_a_quantized_model_reach_its_hidden_state(backend, hidden):
    model = _quantized(backend)
    reference = _logits(model)  # bitsandbytes moves its int8 scales on the first forward
    found = leaves.leaves(model)
    assert hidden in {leaf.kind for leaf in found.values()}
    captured = leaves.capture(model)
    state.perturb(model, seed=1)
    assert len(leaves.diff(model, captured)) == len(captured)
    assert not torch.equal(_logits(model), reference)
    leaves.restore(model, captured)
    assert leaves.diff(model, captured) == []
    assert torch.equal(_logits(model), reference)


def test_a_reset_of_parameters_and_buffers_alone_misses_bitsandbytes_hidden_state():
    """Why the leaves exist: a parameter-view reset of bnb int8 is 'exact', the logits are not.

    The suite's own state (leaf-aware for a quantized model) puts the same model back.
    """
    model = _quantized("bnb8")
    reference = _logits(model)
    views = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    saved = {n: t.detach().clone() for n, t in views.items()}
    state.perturb(model, seed=1)  # the scales in module.state too
    with torch.no_grad():
        for name, t in views.items():
            t.data = saved[name].clone()  # what a parameter-and-buffer reset does
    assert all(torch.equal(t, saved[n]) for n, t in views.items())  # that view sees no change
    assert not torch.equal(_logits(model), reference)  # the forward does
    model = _quantized("bnb8")
    reference = _logits(model)
    kept = state.capture(model)
    state.perturb(model, seed=1)
    state.reset(model, kept)
    assert state.diff(model, kept) == [] and torch.equal(_logits(model), reference)


@pytest.mark.parametrize("backend", ["torchao", "quanto", "bnb8"])
def test_the_profile_loads_a_quantized_subject_and_puts_its_leaves_back(backend, tmp_path):
    """A check that changes a quantized subject is undone in place, hidden state included."""
    from pytest_invarlock.hf_adapter.profile import HFAdapterProfile, _capture
    from pytest_invarlock.profile import Case, Subject

    model = _quantized(backend)
    reference = _logits(model)
    assert leaves.is_quantized(model)
    adapter = type("Quantized", (), {"quantized": True})()
    saved = _capture(adapter, model)
    assert set(saved.tensors) == set(leaves.leaves(model))  # every leaf, not the parameter view
    subject = Subject(Case("hf_adapter", "q", "q", "llama-gqa", None), adapter, model, None,
                      HFAdapterProfile(), saved)
    state.perturb(model, seed=3)
    subject.profile.put_back(subject)
    assert subject.model is model  # written back in place, not reloaded
    assert state.diff(model, subject.saved) == []
    assert torch.equal(_logits(model), reference)


def test_a_full_precision_model_is_not_quantized():
    assert not leaves.is_quantized(load_fixture_model("gpt2"))


def test_the_full_precision_source_of_a_model_is_its_class_on_the_meta_device():
    """Truth for quantized models comes from it: same truth as the real fp model, ties kept."""
    from pytest_invarlock.hf_adapter import truth

    model = load_fixture_model("llama-gqa-tied")
    source = truth.full_precision_source(model)
    assert {p.device.type for p in source.parameters()} == {"meta"}
    assert state.storage_groups(source) == state.storage_groups(model)
    assert truth._derive(source).__dict__ | {"device": "cpu"} == truth.derive(model).__dict__
    assert not state.deep(model)


def test_bitsandbytes_int8_leaves_keep_their_names_across_the_first_forward():
    """The first forward moves SCB from the weight to module.state (trap X1): same leaf name."""
    model = _quantized("bnb8")
    before = leaves.capture(model)
    assert any(n.endswith("weight.SCB") for n in before)
    _logits(model)
    assert set(leaves.leaves(model)) == set(before) and leaves.diff(model, before) == []
