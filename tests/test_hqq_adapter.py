"""hf_hqq on real HQQ (the cpu-quant lane's environment installs hqq; skipped without it).

Truth comes from outside the adapter: hf_causal's describe() of the same checkpoint, the real
model's logits and every leaf the forward reads, HQQ's ``meta`` scales and zeros included.
"""

import pytest
import torch

pytest.importorskip("hqq", reason="hqq is not installed: pip install 'pytest-invarlock[hqq]' "
                    "(the cpu-quant lane installs it)")

from pytest_invarlock.adapters import quantized
from pytest_invarlock.adapters.quant_hqq import HFHqqAdapter
from pytest_invarlock.adapters.roles import HFCausalAdapter
from pytest_invarlock.hf_adapter import leaves, state
from pytest_invarlock.hf_adapter.fixtures import fixture_path

IDS = torch.arange(16).reshape(2, 8)
LOGICAL = ("n_layer", "heads_per_layer", "gqa_config", "mlp_dims", "tying", "architecture",
           "total_params")


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _config(name):
    import transformers

    return transformers.AutoConfig.from_pretrained(str(fixture_path(name)))


@pytest.mark.parametrize("name", ["llama-gqa", "qwen2-tied"])
def test_snapshot_restore_is_bit_exact_on_every_leaf_meta_included(name):
    """qwen2's q/k/v biases are plain HQQLinear attributes (hqq 0.2.8): leaves of their own."""
    from hqq.core.quantize import HQQLinear

    adapter = HFHqqAdapter()
    model = adapter.load_model(str(fixture_path(name)), device="cpu")
    found = leaves.leaves(model)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, HQQLinear)}
    assert {f"{n}.meta.{k}" for n in linears for k in ("scale", "zero")} <= set(found)
    biases = {f"{n}.bias" for n, m in linears.items() if m.bias is not None}
    assert bool(biases) == (name == "qwen2-tied") and biases <= set(found)
    assert any(name.endswith(".meta.zero") and leaf.tensor.is_inference()
               for name, leaf in found.items())  # the in-place write needs inference mode
    reference, captured = _logits(model), leaves.capture(model)
    blob = adapter.snapshot(model)
    state.perturb(model, seed=5)
    assert len(leaves.diff(model, captured)) == len(captured)  # every leaf, meta too, changed
    assert not torch.equal(_logits(model), reference)
    adapter.restore(model, blob)
    assert leaves.diff(model, captured) == []
    assert torch.equal(_logits(model), reference)


@pytest.mark.parametrize("name", ["llama-gqa", "llama-gqa-tied", "qwen2-tied"])
def test_describe_is_the_full_precision_structure_plus_the_quantization(name):
    from hqq.core.quantize import HQQLinear

    path = str(fixture_path(name))
    model = HFHqqAdapter().load_model(path, device="cpu")
    fp = HFCausalAdapter().describe(HFCausalAdapter().load_model(path, device="cpu"))
    mine = HFHqqAdapter().describe(model)
    assert {k: mine.get(k) for k in LOGICAL} == {k: fp.get(k) for k in LOGICAL}
    hqq = sorted(n for n, m in model.named_modules() if isinstance(m, HQQLinear))
    assert hqq  # something really was quantized
    assert mine["quantization"] == {"method": "hqq", "bits": 4, "group_size": 64,
                                    "quantized_modules": hqq}


def test_the_floating_point_parameters_hqq_keeps_stay_trainable_as_loaded():
    """quantize_model freezes every parameter; the adapter gives back what it did not quantize."""
    model = HFHqqAdapter().load_model(str(fixture_path("llama-gqa")), device="cpu")
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    assert {n for n, g in grads.items() if not g} == {n for n in grads if n.endswith(".W_q")}


def test_it_handles_its_own_models_and_hf_auto_selects_it():
    from pytest_invarlock.adapters import auto

    path = str(fixture_path("llama-gqa"))
    model = HFHqqAdapter().load_model(path, device="cpu")
    assert model.config.quantization_config == {"quant_method": "hqq", "nbits": 4,
                                                "group_size": 64}
    assert HFHqqAdapter().can_handle(model) is True
    assert HFHqqAdapter().can_handle(HFCausalAdapter().load_model(path, device="cpu")) is False
    assert auto.select_for_model(model) == "hf_hqq"


def test_the_claims_are_valid_and_name_the_platform_run():
    from pytest_invarlock.hf_adapter import capabilities

    claims = HFHqqAdapter().capabilities
    assert capabilities.problems(claims) == []
    assert claims["required_extra"] == "hqq" and "CUDA not verified" in claims["platform_support"]


@pytest.mark.parametrize("name", ["llama-gqa", "llama-gqa-tied", "mistral", "qwen2-tied", "opt",
                                  "mixtral"])
def test_causal_checkpoints_hqq_quantizes_are_not_declined(name):
    assert HFHqqAdapter.declines_config(_config(name)) is None


@pytest.mark.parametrize("name, reason", [
    ("gpt2", "Conv1D.*unquantized"),
    ("falcon", "quantize nothing.*FalconLinear"),
    ("gemma3n-text", "group size 64 does not divide.*altup"),
    ("bert", "can_handle\\(\\) is False"),
    ("t5", "encoder-decoder checkpoint"),
])
def test_checkpoints_hqq_cannot_quantize_are_declined_with_the_reason(name, reason):
    import re

    why = HFHqqAdapter.declines_config(_config(name))
    assert why is not None and re.search(reason, why), why


def test_saved_quantized_checkpoints_are_declined_and_refused(tmp_path):
    import shutil

    config = _config("llama-gqa")
    config.quantization_config = {"quant_method": "hqq", "nbits": 4, "group_size": 64}
    assert "transformers 5" in HFHqqAdapter.declines_config(config)
    config.quantization_config = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    assert "bitsandbytes-quantized checkpoint" in HFHqqAdapter.declines_config(config)
    saved = tmp_path / "hqq-saved"
    shutil.copytree(fixture_path("llama-gqa"), saved)
    config.quantization_config = {"quant_method": "hqq", "nbits": 4, "group_size": 64}
    config.save_pretrained(saved)
    with pytest.raises(ValueError, match="does not load saved HQQ checkpoints"):
        HFHqqAdapter().load_model(str(saved), device="cpu")
    with pytest.raises(ValueError, match=r"Conv1D.*unquantized"):
        HFHqqAdapter().load_model(str(fixture_path("gpt2")), device="cpu")


def test_the_conformance_checks_pass_on_a_tied_llama():
    from pytest_invarlock.api import check_adapter

    results = check_adapter(HFHqqAdapter(), str(fixture_path("llama-gqa-tied")), reference=True)
    assert {r.outcome for r in results} <= {"passed", "skipped"}, [
        (r.check, r.outcome, r.reason[:200]) for r in results if r.outcome != "passed"]
    assert sum(r.outcome == "passed" for r in results) >= 30


class _NoMeta(HFHqqAdapter):
    """Snapshots every leaf but HQQ's meta scales and zeros (what parameters and buffers miss)."""

    name = "hqq_no_meta"

    def snapshot(self, model):
        from safetensors.torch import save

        return memoryview(save({n: t.detach().clone() for n, t in _no_meta(model).items()}))

    def restore(self, model, blob):
        from safetensors.torch import load

        now = _no_meta(model)
        stored = load(bytes(blob))
        wrong = leaves.misfits(now, stored)
        if wrong:
            raise quantized.SnapshotError(f"does not fit: {wrong[:3]}")
        leaves.write_in_place(now, stored)


def _no_meta(model):
    """Return each storage's first leaf, HQQ meta left out."""
    out, seen = {}, set()
    for name, leaf in leaves.leaves(model).items():
        key = state.storage_key(leaf.tensor)
        if leaf.kind != "meta" and key not in seen:
            seen.add(key)
            out[name] = leaf.tensor
    return out


def test_a_snapshot_without_the_meta_scales_and_zeros_fails_exactly_the_exactness_check():
    from pytest_invarlock.api import check_adapter

    results = check_adapter(_NoMeta(), str(fixture_path("llama-gqa")))
    assert {r.check for r in results if r.outcome in ("failed", "error")} == {
        "check_snapshot_roundtrip_bytes", "check_snapshot_before_first_forward"}, [
        (r.check, r.outcome, r.reason[:200]) for r in results if r.outcome != "passed"]
