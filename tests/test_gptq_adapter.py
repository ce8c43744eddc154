"""hf_gptq and hf_awq on real GPTQ/AWQ checkpoints built from the fp fixtures by gptqmodel, on the CPU.

Truth comes from outside the adapters: hf_causal's describe() of the full-precision source, the
source's logits, fresh builds in fresh processes and every leaf the forward reads. The checkpoints
are built once (about 10 s each, in a subprocess) and cached beside the fixtures. Everything here
skips where gptqmodel is not installed (``nox -s tests-gptq`` installs it).
"""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gptqmodel") is None,
    reason="gptqmodel is not installed: pip install 'pytest-invarlock[gptq,awq]' (nox -s tests-gptq)")

from pytest_invarlock.adapters import quantized  # noqa: E402
from pytest_invarlock.adapters.quant_gptq import HFAWQAdapter, HFGPTQAdapter  # noqa: E402
from pytest_invarlock.adapters.roles import HFCausalAdapter  # noqa: E402
from pytest_invarlock.hf_adapter import gptq_build, leaves, state  # noqa: E402
from pytest_invarlock.hf_adapter.fixtures import fixture_path  # noqa: E402

ADAPTERS = {"gptq": HFGPTQAdapter, "awq": HFAWQAdapter}
IDS = torch.arange(3, 19).reshape(2, 8)
LOGICAL = ("n_layer", "heads_per_layer", "gqa_config", "mlp_dims", "tying", "architecture",
           "total_params")
#: measured max |logits - fp32 logits| of the llama-gqa builds: GPTQ 0.071, AWQ 0.066
NEAR_FP = 0.2


def _settings(method):
    return {"method": method, "bits": 4, "group_size": 32}


def _adapter(method):
    adapter = ADAPTERS[method]()
    missing = adapter.unavailable()
    if missing:
        pytest.skip(missing)
    return adapter


def _logits(model, grad=False):
    with torch.set_grad_enabled(grad):
        return model(input_ids=IDS).logits.detach().float()


def _raw(path):
    """Load like a user would, without the adapter (no settling forward)."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(str(path),
                                                             device_map={"": "cpu"}).eval()


@pytest.fixture(scope="module", params=sorted(ADAPTERS))
def built(request):
    adapter = _adapter(request.param)
    return request.param, adapter, gptq_build.quantized_fixture_path("llama-gqa",
                                                                     _settings(request.param))


def test_a_build_in_a_fresh_process_is_byte_identical_to_the_cached_one(built, tmp_path):
    method, _, path = built
    out = tmp_path / "again"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "pytest_invarlock.hf_adapter.gptq_build",
                    str(fixture_path("llama-gqa")), str(out),
                    f'{{"method": "{method}", "bits": 4, "group_size": 32}}'],
                   env=env, check=True, capture_output=True)
    digests = gptq_build.file_digests(out)
    assert digests == gptq_build.file_digests(path)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(digests)
    assert "quant_log.csv" not in digests  # wall times and thread order: not the checkpoint


def test_the_checkpoint_is_quantized_close_to_its_source_and_loads_the_same_twice(built):
    _, adapter, path = built
    fp = _logits(HFCausalAdapter().load_model(str(fixture_path("llama-gqa")), device="cpu"))
    first = _logits(adapter.load_model(str(path), device="cpu"))
    assert torch.equal(first, _logits(adapter.load_model(str(path), device="cpu")))
    assert 0 < (first - fp).abs().max().item() < NEAR_FP


def test_describe_is_the_full_precision_structure_plus_the_quantization(built):
    method, adapter, path = built
    source = str(fixture_path("llama-gqa"))
    fp = HFCausalAdapter().describe(HFCausalAdapter().load_model(source, device="cpu"))
    model = adapter.load_model(str(path), device="cpu")
    mine = adapter.describe(model)
    assert {k: mine[k] for k in LOGICAL} == {k: fp[k] for k in LOGICAL}
    assert sum(p.numel() for p in model.parameters()) < fp["total_params"] // 4  # not the naive sum
    quant = mine["quantization"]
    assert (quant["method"], quant["bits"], quant["group_size"]) == (method, 4, 32)
    assert len(quant["quantized_modules"]) == 14  # 7 linears in each of the 2 layers


def test_quantized_linear_biases_held_as_buffers_count_as_parameters():
    """gptqmodel keeps a quantized linear's bias as a float16 buffer (qwen2's q/k/v have one)."""
    adapter = _adapter("gptq")
    path = gptq_build.quantized_fixture_path("qwen2-tied", _settings("gptq"))
    model = adapter.load_model(str(path), device="cpu")
    assert "bias" in model.model.layers[0].self_attn.q_proj._buffers
    source = HFCausalAdapter().load_model(str(fixture_path("qwen2-tied")), device="cpu")
    assert adapter.describe(model)["total_params"] == HFCausalAdapter().describe(source)[
        "total_params"]


def test_a_snapshot_after_load_is_exact_across_any_later_forward(built):
    """load_model settles the kernels: forwards with or without gradients change no leaf."""
    _, adapter, path = built
    model = adapter.load_model(str(path), device="cpu")
    reference, captured = _logits(model), leaves.capture(model)
    blob = adapter.snapshot(model)
    assert torch.equal(_logits(model, grad=True), reference)  # no switch to another kernel path
    assert leaves.diff(model, captured) == []
    state.perturb(model, seed=3)  # ret_idx becomes out-of-range indices: no forward until restored
    assert leaves.diff(model, captured)
    adapter.restore(model, blob)
    assert leaves.diff(model, captured) == []
    assert torch.equal(_logits(model), reference)


def test_the_unsettled_layout_and_the_gradient_trap_are_real(built):
    """Why load_model runs a forward: gptqmodel repacks on the first one, and a first forward
    with gradients locks a dequantizing path with other logits."""
    _, adapter, path = built
    settled = _logits(adapter.load_model(str(path), device="cpu"))
    raw = _raw(path)
    before = {n: (leaf.tensor.dtype, tuple(leaf.tensor.shape)) for n, leaf in leaves.leaves(raw).items()}
    grad_first = _logits(raw, grad=True)
    after = {n: (leaf.tensor.dtype, tuple(leaf.tensor.shape)) for n, leaf in leaves.leaves(raw).items()}
    assert after == before  # the dequantizing path repacks nothing ...
    assert not torch.equal(grad_first, settled)  # ... and computes other logits, for good
    assert not torch.equal(_logits(raw), settled)
    raw = _raw(path)
    _logits(raw)
    after = {n: (leaf.tensor.dtype, tuple(leaf.tensor.shape)) for n, leaf in leaves.leaves(raw).items()}
    assert after != before and any(n.endswith(".scales_and_zeros") for n in after)
    assert torch.equal(_logits(raw), settled)


def test_a_snapshot_before_the_first_forward_is_refused_after_it(built):
    _, adapter, path = built
    model = _raw(path)
    blob = adapter.snapshot(model)
    _logits(model)  # the repack: qweight int32 -> uint8, new caches
    now = leaves.capture(model)
    with pytest.raises(quantized.SnapshotError, match=r"before the first forward.*repack"):
        adapter.restore(model, blob)
    assert leaves.diff(model, now) == []


def test_a_snapshot_after_the_first_forward_is_refused_before_it(built):
    _, adapter, path = built
    blob = adapter.snapshot(adapter.load_model(str(path), device="cpu"))
    model = _raw(path)
    now = leaves.capture(model)
    with pytest.raises(quantized.SnapshotError, match=r"after the first forward.*repack"):
        adapter.restore(model, blob)
    root = adapter.snapshot_chunked(adapter.load_model(str(path), device="cpu"))
    try:
        with pytest.raises(quantized.SnapshotError, match=r"after the first forward.*repack"):
            adapter.restore_chunked(model, root)
    finally:
        import shutil

        shutil.rmtree(root)
    assert leaves.diff(model, now) == []


def test_the_conformance_suite_passes(built):
    from pytest_invarlock.api import check_adapter

    _, adapter, path = built
    results = check_adapter(adapter, str(path), reference=True)
    assert {r.outcome for r in results} <= {"passed", "skipped"}, [
        (r.check, r.outcome, r.reason[:300]) for r in results if r.outcome not in ("passed", "skipped")]
    assert sum(r.outcome == "passed" for r in results) >= 30


def test_full_precision_and_other_methods_checkpoints_are_declined(built):
    method, adapter, path = built
    import transformers

    fp = str(fixture_path("llama-gqa"))
    reason = adapter.declines_config(transformers.AutoConfig.from_pretrained(fp))
    assert reason and "pre-quantized" in reason
    with pytest.raises(ValueError, match=f"loads pre-quantized {method} checkpoints only"):
        adapter.load_model(fp, device="cpu")
    other = "awq" if method == "gptq" else "gptq"
    other_path = gptq_build.quantized_fixture_path("llama-gqa", _settings(other))
    config = transformers.AutoConfig.from_pretrained(str(other_path))
    assert f"{ADAPTERS[other].name} loads it" in adapter.declines_config(config)
    with pytest.raises(ValueError, match=ADAPTERS[other].name):
        adapter.load_model(str(other_path), device="cpu")
    assert adapter.can_handle(adapter.load_model(str(path), device="cpu"))
    assert not ADAPTERS[other]().can_handle(adapter.load_model(str(path), device="cpu"))
    assert not adapter.can_handle(HFCausalAdapter().load_model(fp, device="cpu"))


@pytest.mark.parametrize("settings, message", [
    ({"method": "gptq", "bits": 4, "group_size": 64}, "does not divide"),  # intermediate 96
    ({"method": "gptq", "bits": 8, "group_size": 32}, "bits"),
    ({"method": "rtn", "bits": 4, "group_size": 32}, "method"),
    ({"method": "awq", "bits": 4, "group_size": 32, "sym": False}, "unknown"),
])
def test_settings_the_cpu_kernels_cannot_run_are_refused_before_quantizing(settings, message,
                                                                           tmp_path):
    with pytest.raises(ValueError, match=message):
        gptq_build.build_gptq(fixture_path("llama-gqa-tied"), tmp_path / "out", settings)
    assert not (tmp_path / "out").exists()
