"""The loading and chunked checks: remote code in any order, the from_pretrained spy, multi-chunk
and hygiene corner cases."""

import tempfile
from pathlib import Path
from typing import ClassVar

import broken_adapters as broken
import broken_loading
import pytest

from pytest_invarlock.adapters.roles import HFCausalAdapter, HFMLMAdapter
from pytest_invarlock.api import check_adapter
from pytest_invarlock.hf_adapter.checks import chunked, loading

CHECKS = [*loading.CHECKS, *chunked.CHECKS]
CASES = broken_loading.CASES


@pytest.fixture(autouse=True)
def _private_tempdir(tmp_path, monkeypatch):
    """Keep what broken adapters leave in the temporary directory (lock files) out of /tmp."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))


def _not_passing(results):
    return {r.check: r.reason for r in results if r.outcome not in ("passed", "skipped")}


# Every case of broken_loading.CASES runs in tests/test_checks_fail.py with all checks.


def test_remote_code_is_caught_for_every_adapter_in_any_order(fixture_dir):
    """Python and transformers cache imported remote code: each run must still see it run."""
    order = [broken.TrustsRemoteCode, broken_loading.TrustsRemoteCodeForCustomModels,
             broken.TrustsRemoteCode, broken_loading.PeeksWithRemoteConfig,
             broken_loading.TrustsRemoteCodeForCustomModels, broken.TrustsRemoteCode]
    check = loading.check_load_model_refuses_remote_code
    for adapter in order:
        [result] = check_adapter(adapter(), fixture_dir("gpt2"), checks=[check])
        assert result.outcome == "failed", (adapter.__name__, result)
        assert "executed the checkpoint's own Python code" in result.reason
    for adapter in (HFCausalAdapter, HFMLMAdapter):  # and nothing stale fails a correct adapter
        [result] = check_adapter(adapter(), fixture_dir("gpt2" if adapter is HFCausalAdapter
                                                        else "bert"), checks=[check])
        assert result.outcome == "passed", result


def test_remote_code_check_leaves_no_modules_behind(fixture_dir):
    import sys

    before = {m for m in sys.modules if m.startswith("transformers_modules")}
    check_adapter(broken.TrustsRemoteCode(), fixture_dir("gpt2"),
                  checks=[loading.check_load_model_refuses_remote_code])
    after = {m for m in sys.modules if m.startswith("transformers_modules")}
    assert after <= before
    assert not [p for p in sys.path if "invarlock-remote-code-" in p]


def test_spy_restores_from_pretrained():
    import transformers
    from transformers.models.auto import configuration_auto

    owners = [transformers.AutoModelForCausalLM, transformers.PreTrainedModel,
              configuration_auto.AutoConfig]
    saved = [o.__dict__["from_pretrained"] for o in owners]
    with loading._spy_from_pretrained():
        assert [o.__dict__["from_pretrained"] for o in owners] != saved
    assert [o.__dict__["from_pretrained"] for o in owners] == saved


def test_multi_chunk_note_when_no_size_keyword(fixture_dir):
    class NoKeyword(HFCausalAdapter):
        def snapshot_chunked(self, model, *, prefix="invarlock-snap-"):
            return super().snapshot_chunked(model, prefix=prefix)

    assert chunked.size_keyword(NoKeyword()) is None
    assert chunked.size_keyword(HFCausalAdapter()) == "chunk_bytes"
    [result] = check_adapter(NoKeyword(), fixture_dir("gpt2"),
                             checks=[chunked.check_chunked_roundtrip_multi_chunk])
    assert result.outcome == "passed"
    assert "multi-chunk not forced" in result.reason


def test_multi_chunk_defers_to_the_single_round_trip_check(fixture_dir):
    [result] = check_adapter(broken.ApproximateChunks(), fixture_dir("llama-gqa"),
                             checks=[chunked.check_chunked_roundtrip_multi_chunk])
    assert result.outcome == "skipped"
    assert "check_snapshot_roundtrip_chunked" in result.reason


def test_multi_chunk_through_kwargs(fixture_dir):
    class KwargsIgnored(HFCausalAdapter):
        def snapshot_chunked(self, model, *, prefix="invarlock-snap-", **kwargs):
            return super().snapshot_chunked(model, prefix=prefix)

    [result] = check_adapter(KwargsIgnored(), fixture_dir("gpt2"),
                             checks=[chunked.check_chunked_roundtrip_multi_chunk])
    assert result.outcome == "passed"
    assert "ignored it through **kwargs" in result.reason


def test_multi_chunk_under_a_best_effort_claim(fixture_dir):
    class BestEffortFirstChunkOnly(broken_loading.FirstChunkOnly):
        capabilities: ClassVar[dict] = {
            "snapshot_restore": "best_effort", "guard_coverage": "full",
            "platform_support": "all", "runtime_constraints": [], "required_extra": None,
            "degraded_modes": []}

    [result] = check_adapter(BestEffortFirstChunkOnly(), fixture_dir("llama-gqa"),
                             checks=[chunked.check_chunked_roundtrip_multi_chunk])
    assert result.outcome == "failed"
    assert "returned normally but the model is not its original state" in result.reason


def test_hygiene_sees_the_working_directory_and_writes_into_the_snapshot(fixture_dir, tmp_path,
                                                                         monkeypatch):
    import os

    class Messy(HFCausalAdapter):
        def snapshot_chunked(self, model, **kwargs):
            Path("snapshot.log").write_text("wrote a snapshot\n")
            return super().snapshot_chunked(model, **kwargs)

        def restore_chunked(self, model, path):
            super().restore_chunked(model, path)
            (Path(path) / ".restored").touch()

    monkeypatch.chdir(tmp_path)
    [result] = check_adapter(Messy(), fixture_dir("gpt2"), strict=True,
                             checks=[chunked.check_chunked_snapshot_stays_in_its_directory])
    assert result.outcome == "failed"
    assert "2 problems" in result.reason
    assert "snapshot_chunked() wrote 'snapshot.log' into the working directory" in result.reason
    assert "restore_chunked() (twice) created" in result.reason and ".restored" in result.reason
    assert os.listdir(tmp_path) == ["snapshot.log"]


def test_hygiene_sees_a_snapshot_outside_the_temporary_directory(fixture_dir, tmp_path):
    class FixedPlace(HFCausalAdapter):
        def snapshot_chunked(self, model, **kwargs):
            return super().snapshot_chunked(model, directory=str(tmp_path), **kwargs)

    [result] = check_adapter(FixedPlace(), fixture_dir("gpt2"), strict=True,
                             checks=[chunked.check_chunked_snapshot_stays_in_its_directory])
    assert result.outcome == "failed"
    assert "outside tempfile.gettempdir()" in result.reason
    assert list(tmp_path.iterdir()) == []  # the suite removed the stray snapshot


def test_hygiene_sees_a_nested_snapshot_directory(fixture_dir):
    class Nested(HFCausalAdapter):
        def snapshot_chunked(self, model, **kwargs):
            own = Path(tempfile.gettempdir()) / "my-adapter"
            own.mkdir(exist_ok=True)
            return super().snapshot_chunked(model, directory=str(own), **kwargs)

    [result] = check_adapter(Nested(), fixture_dir("gpt2"), strict=True,
                             checks=[chunked.check_chunked_snapshot_stays_in_its_directory])
    assert result.outcome == "failed"
    assert "'my-adapter' is still in" in result.reason
