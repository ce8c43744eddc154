"""Every check fails for an adapter with exactly the bug it exists to catch, and says the fix."""

import tempfile

import broken_adapters as broken
import broken_loading
import broken_preservation
import broken_quantized
import pytest

from pytest_invarlock.adapters.roles import HFCausalAdapter
from pytest_invarlock.api import check_adapter
from pytest_invarlock.hf_adapter.checks import SHOULD, all_checks, level_of

# (broken adapter, fixture, reference?, the one failing check, words its message must contain)
CASES = [
    (broken.NeverHandles, "gpt2", False, "check_can_handle_own_model", ["can_handle", "accept"]),
    (broken.ClaimsAnUnknownLevel, "gpt2", False, "check_capabilities_are_valid",
     ["snapshot_restore", "'perfect' is not one of", "Declare snapshot_restore"]),
    (broken.MovesABackendManagedModel, "gpt2", False, "check_backend_device_movement_is_respected",
     ["restore() called model.to('cpu')", "device_movement_managed_by_backend", "never move"]),
    (broken.IgnoresDtype, "llama-gqa", False, "check_load_model_honours_dtype",
     ["torch.bfloat16", "model.embed_tokens.weight", "pass dtype through"]),
    (broken.DescribeNotJson, "gpt2", False, "check_describe_is_json_serializable",
     ["describe()['dtype']", "torch.dtype", "convert it"]),
    (broken.DescribeStringLayers, "gpt2", False, "check_describe_matches_schema",
     ["n_layer", "is not of type 'integer'"]),
    (broken.CountsEmbeddingAsLayer, "gpt2", False, "check_describe_layers",
     ["describe()['n_layer'] is 3", "2 layers", "config.num_hidden_layers"]),
    (broken.ReportsKvHeadsAsHeads, "llama-gqa-tied", False, "check_describe_heads",
     ["describe()['heads_per_layer'][0] is 2", "4 attention heads", "query heads"]),
    (broken.IgnoresGqaInGqaConfig, "llama-gqa", False, "check_describe_gqa_config",
     ["['gqa_config']['num_key_value_heads'] is 4", "has 1", "k_proj"]),
    (broken.OmitsGqaConfig, "llama-gqa", False, "check_describe_reports_optional_metadata",
     ["lacks gqa_config", "4 query heads and 1 K/V heads"]),
    (broken.ReadsConv1DBackwards, "gpt2", False, "check_describe_mlp_dims",
     ["describe()['mlp_dims'][0] is 64", "256", "Conv1D"]),
    (broken.CountsRoutedExpertsAsExperts, "mixtral", False, "check_describe_experts",
     ["['architecture']['num_experts'] is 2", "has 4", "expert weights"]),
    (broken.ReadsLayerTypesFromTheFirstLayer, "gemma3-text-sliding", False,
     "check_describe_layer_types", ["layer 1 is 'sliding_attention', the model's is "
                                    "'full_attention'", "sliding_window"]),
    (broken.ForgetsTies, "llama-gqa-tied", False, "check_describe_tying",
     ["lm_head.weight = model.embed_tokens.weight", "storage identity"]),
    (broken.CountsTiedTwice, "gpt2", False, "check_describe_total_params",
     ["total_params", "shared storage once", "model.parameters()"]),
    (broken.CallsGqaCausal, "llama-gqa-tied", False, "check_describe_metadata",
     ["['architecture']['attention_type'] is 'causal'", "'gqa'", "num_key_value_heads"]),
    (broken.UntiesOnLoad, "gpt2", False, "check_tying_after_load",
     ["tie_word_embeddings is True", "lm_head.weight", "transformer.wte.weight"]),
    (broken.TiesByView, "llama-gqa-tied", False, "check_tying_after_to",
     ["model.to()", "same Parameter object"]),
    (broken.CopiesTiesByValue, "gpt2", False, "check_restore_reties_tied_weights",
     ["lm_head.weight", "re-bind"]),
    (broken.StaleRotaryBuffer, "llama-gqa", False, "check_snapshot_roundtrip_bytes",
     ["model.rotary_emb.inv_freq", "every buffer"]),
    (broken.ApproximateChunks, "llama-gqa", False, "check_snapshot_roundtrip_chunked",
     ["restore_chunked()", "bit-identical", "differs"]),
    (broken.IgnoresUnknownKeys, "llama-gqa", False, "check_restore_rejects_foreign_snapshot",
     ["a snapshot of a", "succeeded", "raise"]),
    (broken.AcceptsPrefixes, "gpt2", False, "check_restore_rejects_truncated_blob",
     ["truncated to 0", "succeeded"]),
    (broken.NoChecksum, "gpt2", False, "check_restore_rejects_tampered_blob",
     ["2 problems", "changed (inside 'transformer.", "succeeded", "checksum per tensor"]),
    (broken.EncodesWithoutChecksum, "gpt2", False, "check_restore_rejects_tampered_blob",
     ["2 problems", "changed (at 5/8 of the file: the tensor values are encoded)", "succeeded"]),
    (broken.SkipsDamagedChunks, "gpt2", False, "check_restore_chunked_rejects_damaged_chunks",
     ["3 problems", "truncated to", "missing chunk-00000.safetensors", "succeeded"]),
    (broken.TrustsManifest, "gpt2", False, "check_restore_chunked_rejects_flipped_chunk",
     ["chunk-00000.safetensors has byte", "changed (inside", "checksum per file"]),
    (broken.FollowsManifestPaths, "gpt2", False, "check_restore_chunked_refuses_escaping_paths",
     ["manifest.json points at", "is a symlink out of the directory", "refuse symlinks"]),
    (broken.CastsToSnapshotDtype, "llama-gqa", False, "check_restore_rejects_dtype_mismatch",
     ["torch.float16", "succeeded"]),
    (broken.FallsBackToTorchLoad, "gpt2", False, "check_restore_refuses_pickle",
     ["restore() of a raw pickle", "executed the pickle's payload", "never unpickle"]),
]


CASES += broken_loading.CASES + broken_preservation.CASES


@pytest.fixture(autouse=True)
def _private_tempdir(tmp_path, monkeypatch):
    """Keep what broken adapters leave in the temporary directory (lock files) out of /tmp."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
LEVELS = {c.__name__: level_of(c) for c in all_checks()}


def test_every_check_has_a_breaking_case():
    """Here, or among the broken quantized adapters (run where their backend is installed)."""
    covered = {case[3] for case in CASES}
    covered |= {check for case in broken_quantized.CASES for check in case[3]}
    covered |= {check for case in broken_quantized.FULL_PRECISION_CASES for check in case[1]}
    assert covered == {c.__name__ for c in all_checks()}


@pytest.mark.parametrize("fixture", ["gpt2", "llama-gqa-tied", "llama-gqa"])
def test_reference_adapter_passes_everything(fixture, fixture_dir):
    """The reference adapter is hardened: no failure, no SHOULD finding, nothing unjudged."""
    results = check_adapter(HFCausalAdapter(), fixture_dir(fixture), reference=True)
    assert [r for r in results if r.outcome not in ("passed", "skipped")] == []


@pytest.mark.parametrize(("adapter", "fixture", "reference", "check", "words"), CASES,
                         ids=[f"{c[0].__name__}-{c[3]}" for c in CASES])
def test_broken_adapter_fails_exactly_its_check(adapter, fixture, reference, check, words,
                                                fixture_dir):
    results = check_adapter(adapter(), fixture_dir(fixture), reference=reference)
    failing = {r.check: r.reason for r in results if r.outcome != "passed"
               and r.outcome != "skipped"}
    assert set(failing) == {check}, failing
    expected = "finding" if LEVELS[check] == SHOULD else "failed"
    assert [r.outcome for r in results if r.check == check] == [expected]
    for word in words:
        assert word in failing[check]
