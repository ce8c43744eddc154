"""The compressed-tensors reference adapter (hf_ct) and the offline ct checkpoint builder.

Truth comes from outside the adapter: the full-precision fixture the checkpoint was built from
(hf_causal's describe() of it, its logits), a plain transformers load of the checkpoint (the
first forward decompressing it as compressed-tensors does), and every leaf the forward reads.
"""

import hashlib
import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("compressed_tensors") is None,
    reason="compressed-tensors is not installed (pip install 'pytest-invarlock[ct]'; the "
           "cpu-quant lane installs it)")

from pytest_invarlock.adapters import quantized  # noqa: E402
from pytest_invarlock.adapters.roles import HFCausalAdapter  # noqa: E402
from pytest_invarlock.hf_adapter import leaves, state  # noqa: E402
from pytest_invarlock.hf_adapter.fixtures import fixture_path  # noqa: E402

LOGICAL = ("n_layer", "heads_per_layer", "gqa_config", "mlp_dims", "tying", "architecture",
           "total_params")
BUILDS = {"w4g32": {"bits": 4, "group_size": 32}, "w8ch": {"bits": 8, "group_size": None}}


def _ct():
    from pytest_invarlock.adapters.quant_ct import HFCTAdapter

    return HFCTAdapter()


def _files(root):
    """Return each file's name and sha256 (the whole checkpoint, byte for byte)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def _logits(model):
    with torch.no_grad():
        return state.logits(model)


def _raw(path):
    """Load as transformers does by itself: compressed until the first forward."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).eval()


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """Build every (fixture, scheme) checkpoint once per session: name -> directory."""
    from pytest_invarlock.hf_adapter.ct_build import build_ct

    root = tmp_path_factory.mktemp("ct")
    out = {}
    for fixture in ("llama-gqa", "llama-gqa-tied"):
        for scheme, settings in BUILDS.items():
            out[f"{fixture}-{scheme}"] = root / f"{fixture}-{scheme}"
            build_ct(fixture_path(fixture), out[f"{fixture}-{scheme}"], settings)
    return out


CHECKPOINTS = [f"{f}-{s}" for f in ("llama-gqa", "llama-gqa-tied") for s in BUILDS]


def _source(name):
    return str(fixture_path(name.rsplit("-", 1)[0]))


# --------------------------------------------------------------------------- the builder


def test_building_twice_gives_the_same_bytes(built, tmp_path):
    from pytest_invarlock.hf_adapter.ct_build import build_ct

    build_ct(fixture_path("llama-gqa"), tmp_path / "again", BUILDS["w4g32"])
    assert _files(tmp_path / "again") == _files(built["llama-gqa-w4g32"])


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_a_built_checkpoint_is_compressed_tensors_and_close_to_its_source(built, name):
    import json

    quant = json.loads((built[name] / "config.json").read_text())["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors"
    assert quant["format"] == "pack-quantized" and quant["ignore"] == ["lm_head"]
    model = _raw(built[name])
    packed = dict(model.named_parameters())["model.layers.0.mlp.up_proj.weight_packed"]
    assert packed.dtype == torch.int32
    source = HFCausalAdapter().load_model(_source(name), device="cpu")
    delta = (_logits(model) - _logits(source)).abs().max().item()
    assert 0 < delta < (0.2 if "w4" in name else 0.02)  # quantized, and still the same model


def test_the_builder_refuses_what_it_cannot_build(tmp_path):
    from pytest_invarlock.hf_adapter.ct_build import build_ct

    with pytest.raises(ValueError, match="not a multiple of group_size 48"):
        build_ct(fixture_path("llama-gqa"), tmp_path / "g48", {"group_size": 48})
    with pytest.raises(ValueError, match="nothing would be quantized"):  # gpt2's Conv1D
        build_ct(fixture_path("gpt2"), tmp_path / "gpt2", {})
    with pytest.raises(ValueError, match="unknown ct_build settings"):
        build_ct(fixture_path("llama-gqa"), tmp_path / "x", {"symmetric": False})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("")
    with pytest.raises(FileExistsError):
        build_ct(fixture_path("llama-gqa"), tmp_path / "full", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no half-built leftovers


# --------------------------------------------------------------------------- the adapter


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_describe_is_the_source_structure_before_and_after_the_first_forward(built, name):
    adapter = _ct()
    fp = HFCausalAdapter().describe(HFCausalAdapter().load_model(_source(name), device="cpu"))
    raw = _raw(built[name])
    assert not hasattr(raw.model.layers[0].mlp.up_proj, "weight")  # packed: no .weight yet
    before = adapter.describe(raw)
    _logits(raw)  # compressed-tensors decompresses in place here
    assert hasattr(raw.model.layers[0].mlp.up_proj, "weight")
    after = adapter.describe(raw)
    mine = adapter.describe(adapter.load_model(str(built[name]), device="cpu"))
    for desc in (before, after, mine):
        assert {k: desc[k] for k in LOGICAL} == {k: fp[k] for k in LOGICAL}
        assert desc["quantization"]["quantized_modules"] == mine["quantization"]["quantized_modules"]
    assert len(mine["quantization"]["quantized_modules"]) == 14  # every linear but lm_head
    bits, group = BUILDS[name.rsplit("-", 1)[1]].values()
    assert (mine["quantization"]["bits"], mine["quantization"]["group_size"]) == (bits, group)
    assert mine["quantization"]["method"] == "compressed-tensors"


def test_load_model_settles_the_model_as_its_first_forward_would(built):
    adapter = _ct()
    raw = _raw(built["llama-gqa-w4g32"])
    natural = _logits(raw)  # the first forward: decompressed by compressed-tensors' hook
    model = adapter.load_model(str(built["llama-gqa-w4g32"]), device="cpu")
    captured = leaves.capture(model)
    assert torch.equal(_logits(model), natural)
    assert leaves.diff(model, captured) == []  # a forward changes nothing any more
    assert leaves.diff(model, leaves.capture(raw)) == []  # the very tensors the hook made
    assert not hasattr(model, "ct_decompress_hook")


def test_the_settled_model_rebinds_an_assigned_parameter_as_torch_does(built):
    """compressed-tensors' own first forward swaps every ``_parameters`` for an OffloadCache,
    where assigning a Parameter copies into the old tensor; load_model skips that conversion."""
    model = _ct().load_model(str(built["llama-gqa-tied-w4g32"]), device="cpu")
    assert all(type(m._parameters) is dict for m in model.modules())
    old = model.lm_head.weight
    model.lm_head.weight = torch.nn.Parameter(old.detach().clone())  # untie
    assert model.lm_head.weight is not old and model.model.embed_tokens.weight is old
    assert state.storage_groups(model) == ()


@pytest.mark.parametrize("forward_first", [False, True], ids=["snapshot-forward", "forward-snapshot"])
def test_snapshots_are_exact_whether_a_forward_comes_first_or_not(built, forward_first):
    adapter = _ct()
    model = adapter.load_model(str(built["llama-gqa-tied-w4g32"]), device="cpu")
    if forward_first:
        _logits(model)
    captured = leaves.capture(model)
    blob = adapter.snapshot(model)
    reference = _logits(model)
    state.perturb(model, seed=3)
    assert not torch.equal(_logits(model), reference)
    adapter.restore(model, blob)
    assert leaves.diff(model, captured) == []
    assert torch.equal(_logits(model), reference)
    assert state.storage_groups(model) == (("model.embed_tokens.weight", "lm_head.weight"),)


def test_a_snapshot_of_the_compressed_model_is_refused_after_it_decompressed(built):
    from pytest_invarlock.adapters.quant_ct import settle

    adapter = _ct()
    raw = _raw(built["llama-gqa-w4g32"])
    blob = adapter.snapshot(raw)  # compressed: weight_packed
    _logits(raw)
    now = leaves.capture(raw)
    with pytest.raises(quantized.SnapshotError, match="decompressed since"):
        adapter.restore(raw, blob)
    assert leaves.diff(raw, now) == []  # refused before writing anything
    fresh = _raw(built["llama-gqa-w4g32"])
    settled = adapter.snapshot(adapter.load_model(str(built["llama-gqa-w4g32"]), device="cpu"))
    with pytest.raises(quantized.SnapshotError, match="does not fit"):
        adapter.restore(fresh, settled)  # and the other way round
    settle(fresh)
    adapter.restore(fresh, settled)
    assert torch.equal(_logits(fresh), _logits(raw))


def test_it_declines_every_checkpoint_without_a_compressed_tensors_config(built):
    import transformers

    cls = type(_ct())
    for fixture in ("llama-gqa", "gpt2"):
        config = transformers.AutoConfig.from_pretrained(str(fixture_path(fixture)),
                                                   local_files_only=True)
        assert "pre-quantized compressed-tensors" in cls.declines_config(config)
    ct = transformers.AutoConfig.from_pretrained(str(built["llama-gqa-w4g32"]), local_files_only=True)
    assert cls.declines_config(ct) is None
    with pytest.raises(ValueError, match="not a compressed-tensors checkpoint"):
        _ct().load_model(str(fixture_path("llama-gqa")), device="cpu")
    with pytest.raises(TypeError, match="pre-quantized"):
        _ct().quantization_config()


def test_can_handle_its_own_models_only(built):
    adapter = _ct()
    assert adapter.can_handle(adapter.load_model(str(built["llama-gqa-w4g32"]), device="cpu"))
    assert not adapter.can_handle(HFCausalAdapter().load_model(_source("llama-gqa-w4g32"),
                                                               device="cpu"))


# --------------------------------------------------------------------------- conformance


@pytest.mark.parametrize("name", ["llama-gqa-w4g32", "llama-gqa-tied-w8ch"])
def test_the_adapter_passes_the_conformance_suite(built, name):
    from pytest_invarlock.api import check_adapter

    results = check_adapter(_ct(), str(built[name]))
    assert not [r for r in results if r.outcome not in ("passed", "skipped")], [
        (r.check, r.outcome, r.reason[:200]) for r in results if r.outcome not in ("passed",
                                                                                    "skipped")]
    assert sum(r.outcome == "passed" for r in results) >= 34


def test_counting_scales_as_parameters_fails_exactly_the_total_params_check(built):
    from pytest_invarlock.adapters.quant_ct import HFCTAdapter
    from pytest_invarlock.api import check_adapter

    class CountsScales(HFCTAdapter):
        """Counts every stored parameter, weight_scale and weight_shape included."""

        name = "counts_scales"

        def describe(self, model):
            return {**super().describe(model),
                    "total_params": sum(p.numel() for p in model.parameters())}

    results = check_adapter(CountsScales(), str(built["llama-gqa-w4g32"]))
    assert {r.check for r in results if r.outcome in ("failed", "error")} == {
        "check_describe_total_params"}, [(r.check, r.outcome, r.reason[:200]) for r in results
                                         if r.outcome != "passed"]


def test_logical_params_skip_packed_weights_and_scales(built):
    raw = _raw(built["llama-gqa-w4g32"])
    source = HFCausalAdapter().load_model(_source("llama-gqa-w4g32"), device="cpu")
    total = sum(p.numel() for p in source.parameters())
    assert sum(p.numel() for p in raw.parameters()) != total  # packed + scales + shapes
    assert quantized.logical_params(raw) == total
    _logits(raw)
    assert quantized.logical_params(raw) == total
    assert len(quantized.quantized_modules(raw)) == 14

