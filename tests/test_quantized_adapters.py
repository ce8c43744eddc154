"""The quantized reference adapters, on real backends where installed (the cpu-quant lane's).

Truth comes from outside the adapter: the full-precision adapter's describe() of the same
checkpoint, the real model's logits and every leaf the forward reads.
"""

import importlib.util

import broken_quantized
import pytest
import torch

from pytest_invarlock.adapters import quantized
from pytest_invarlock.adapters.roles import HFCausalAdapter
from pytest_invarlock.hf_adapter import leaves, state
from pytest_invarlock.hf_adapter.fixtures import fixture_path

ADAPTERS = {"hf_torchao": quantized.HFTorchAoAdapter, "hf_quanto": quantized.HFQuantoAdapter,
            "hf_bnb": quantized.HFBnbAdapter}
IDS = torch.arange(16).reshape(2, 8)
LOGICAL = ("n_layer", "heads_per_layer", "gqa_config", "mlp_dims", "tying", "architecture",
           "total_params")


def _adapter(name):
    cls = ADAPTERS[name]
    missing = cls.unavailable()  # the whole module: `optimum` alone (gptq's) is not optimum-quanto
    if missing:
        pytest.skip(f"{missing} (the cpu-quant lane installs it)")
    return cls()


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture(params=sorted(ADAPTERS))
def loaded(request):
    adapter = _adapter(request.param)
    path = str(fixture_path("llama-gqa"))
    return adapter, adapter.load_model(path, device="cpu"), path


def test_describe_is_the_full_precision_structure_plus_the_quantization(loaded):
    adapter, model, path = loaded
    fp = HFCausalAdapter().describe(HFCausalAdapter().load_model(path, device="cpu"))
    mine = adapter.describe(model)
    assert {k: mine[k] for k in LOGICAL} == {k: fp[k] for k in LOGICAL}
    assert mine["quantization"]["method"] == adapter.quant_method
    assert mine["quantization"]["quantized_modules"]  # at least one module really quantized


def test_snapshot_restore_is_bit_exact_on_every_leaf_and_the_logits(loaded):
    adapter, model, _ = loaded
    reference = _logits(model)
    captured = leaves.capture(model)
    blob = adapter.snapshot(model)
    state.perturb(model, seed=5)
    assert not torch.equal(_logits(model), reference)
    adapter.restore(model, blob)
    assert leaves.diff(model, captured) == []
    assert torch.equal(_logits(model), reference)


def test_a_damaged_snapshot_is_refused_and_the_model_untouched(loaded):
    adapter, model, _ = loaded
    blob = bytes(adapter.snapshot(model))
    state.perturb(model, seed=6)
    now = leaves.capture(model)
    with pytest.raises(quantized.SnapshotError):
        adapter.restore(model, blob[:len(blob) // 2])
    flipped = bytearray(blob)
    flipped[-3] ^= 0x10  # inside the last tensor's bytes
    with pytest.raises(quantized.SnapshotError, match="sha256"):
        adapter.restore(model, flipped)
    other = HFCausalAdapter().load_model(str(fixture_path("gpt2")), device="cpu")
    with pytest.raises(quantized.SnapshotError, match="does not fit"):
        adapter.restore(model, quantized.snapshot_leaves(other))
    assert leaves.diff(model, now) == []


def test_can_handle_its_own_models_only(loaded):
    adapter, model, path = loaded
    assert adapter.can_handle(model) is True
    assert adapter.can_handle(HFCausalAdapter().load_model(path, device="cpu")) is False


def test_logical_params_of_a_full_precision_model_is_its_parameter_count():
    model = HFCausalAdapter().load_model(str(fixture_path("llama-gqa-tied")), device="cpu")
    assert quantized.logical_params(model) == sum(p.numel() for p in model.parameters())
    assert quantized.quantized_modules(model) == []


def test_chunked_snapshots_roundtrip_and_refuse_damage(loaded, tmp_path):
    import json

    adapter, model, _ = loaded
    reference, captured = _logits(model), leaves.capture(model)
    root = adapter.snapshot_chunked(model, directory=str(tmp_path), chunk_bytes=4096)
    chunks = sorted(p.name for p in (tmp_path / root).iterdir() if p.suffix == ".safetensors")
    assert len(chunks) > 1  # the chunk size is honoured
    state.perturb(model, seed=7)
    adapter.restore_chunked(model, root)
    assert leaves.diff(model, captured) == [] and torch.equal(_logits(model), reference)
    target = tmp_path / root / chunks[-1]
    data = bytearray(target.read_bytes())
    data[-2] ^= 0x01
    target.write_bytes(bytes(data))
    state.perturb(model, seed=8)
    now = leaves.capture(model)
    with pytest.raises(quantized.SnapshotError, match="sha256"):
        adapter.restore_chunked(model, root)
    manifest = tmp_path / root / "manifest.json"
    payload = json.loads(manifest.read_text())
    payload["files"][0]["file"] = "../escape.safetensors"
    manifest.write_text(json.dumps(payload))
    with pytest.raises(quantized.SnapshotError, match="outside the snapshot"):
        adapter.restore_chunked(model, root)
    assert leaves.diff(model, now) == []


def test_the_truth_of_a_quantized_model_is_that_of_its_full_precision_source(loaded):
    from pytest_invarlock.hf_adapter import truth

    _, model, path = loaded
    fp = truth.derive(HFCausalAdapter().load_model(path, device="cpu"))
    assert truth.derive(model) == fp


@pytest.mark.parametrize("broken, backend, model, failing", broken_quantized.CASES)
def test_a_broken_quantized_adapter_fails_exactly_its_check(broken, backend, model, failing):
    from pytest_invarlock.api import check_adapter

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (the cpu-quant lane installs it)")
    from pytest_invarlock.hf_adapter.quant_fixtures import quant_fixture_path, quantized_catalog

    path = quant_fixture_path(model) if model in quantized_catalog() else fixture_path(model)
    results = check_adapter(broken(), str(path))
    assert {r.check for r in results if r.outcome in ("failed", "error")} == failing, [
        (r.check, r.outcome, r.reason[:200]) for r in results if r.outcome != "passed"]


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_put_back_reties_and_reloads_what_cannot_be_written_in_place(name):
    """After a check unties the embeddings, or casts the model, the next check gets it back."""
    from types import SimpleNamespace

    from pytest_invarlock.hf_adapter.profile import HFAdapterProfile, _capture
    from pytest_invarlock.profile import Case, Subject

    adapter = _adapter(name)
    path = str(fixture_path("llama-gqa-tied"))
    model = adapter.load_model(path, device="cpu")
    reference, groups = _logits(model), state.storage_groups(model)
    assert groups  # the embeddings and the LM head share one tensor
    ctx = SimpleNamespace(model_path=path, device="cpu")
    subject = Subject(Case("hf_adapter", name, name, "llama-gqa-tied", path), adapter, model,
                      ctx, HFAdapterProfile(), _capture(adapter, model))
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untie
    state.perturb(model, seed=4)
    subject.profile.put_back(subject)
    assert subject.model is model and state.storage_groups(model) == groups
    assert torch.equal(_logits(model), reference)
    with torch.no_grad():
        model.model.embed_tokens.weight.data = model.model.embed_tokens.weight.data.half()
    subject.profile.put_back(subject)  # a dtype cannot be written back in place: load afresh
    assert subject.model is not model and state.diff(subject.model, subject.saved) == []
    assert torch.equal(_logits(subject.model), reference)


def test_malformed_leaf_snapshots_are_refused_with_snapshot_errors(loaded, tmp_path):
    import json

    adapter, model, _ = loaded
    now = leaves.capture(model)
    from safetensors.torch import save

    for metadata in ({"format": quantized.SNAPSHOT_FORMAT, "aliases": "[]", "sha256": "{}"},
                     {"format": quantized.SNAPSHOT_FORMAT, "aliases": "{}", "sha256": "[]"}):
        with pytest.raises(quantized.SnapshotError):
            adapter.restore(model, save({"x": torch.zeros(1)}, metadata=metadata))
    root = tmp_path / "snap"
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps([1, 2]))
    with pytest.raises(quantized.SnapshotError, match="manifest"):
        adapter.restore_chunked(model, root)
    (root / "manifest.json").unlink()
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps({"format": quantized.CHUNKED_FORMAT, "files": []}))
    (root / "manifest.json").symlink_to(outside)
    with pytest.raises(quantized.SnapshotError, match="symlink"):
        adapter.restore_chunked(model, root)
    assert leaves.diff(model, now) == []


@pytest.mark.parametrize("adapter, failing", broken_quantized.FULL_PRECISION_CASES)
def test_a_full_precision_adapter_refuses_or_handles_a_quantized_checkpoint(adapter, failing):
    from pytest_invarlock.api import check_adapter
    from pytest_invarlock.hf_adapter.checks import loading

    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed (the cpu-quant lane installs it)")
    results = check_adapter(adapter(), str(fixture_path("llama-gqa")),
                            checks=[loading.check_load_model_refuses_quantized_checkpoint])
    assert {r.check for r in results if r.outcome in ("failed", "error")} == failing, [
        (r.check, r.outcome, r.reason[:300]) for r in results]
    if failing:
        assert "not exact" in results[0].reason or "raised" in results[0].reason


def test_loading_a_quantized_checkpoint_through_hf_causal_names_the_adapter():
    from pytest_invarlock.adapters.base import QuantizedCheckpoint
    from pytest_invarlock.hf_adapter.quant_fixtures import quant_fixture_path

    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed (the cpu-quant lane installs it)")
    path = quant_fixture_path("llama-gqa-bnb-int8")
    with pytest.raises(QuantizedCheckpoint, match=r"config\.json has quantization_config "
                       r"quant_method 'bitsandbytes'.*hf_bnb.*pytest-invarlock\[bnb\]"):
        HFCausalAdapter().load_model(str(path), device="cpu")


class _Gpt2Only(HFCausalAdapter):
    """Refuses every family but GPT-2, without a word about quantization."""

    name = "gpt2_only"

    def load_model(self, model_id, device="auto", **hf_kwargs):
        import json
        from pathlib import Path

        family = json.loads((Path(model_id) / "config.json").read_text())["model_type"]
        if family != "gpt2":
            raise ValueError(f"gpt2_only takes model_type gpt2, not {family}")
        return super().load_model(model_id, device, **hf_kwargs)


def test_a_refusal_for_the_family_says_nothing_about_quantization():
    """Not applicable: the adapter refuses the quantized fixture's full-precision source too."""
    from pytest_invarlock.api import check_adapter
    from pytest_invarlock.hf_adapter.checks import loading

    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed (the cpu-quant lane installs it)")
    [result] = check_adapter(_Gpt2Only(), str(fixture_path("gpt2")),
                             checks=[loading.check_load_model_refuses_quantized_checkpoint])
    assert result.outcome == "skipped", result.reason
    assert "does not load the fixture 'llama-gqa' in full precision either" in result.reason
