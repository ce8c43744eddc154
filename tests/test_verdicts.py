"""Verdicts: MUST vs SHOULD levels, --invarlock-strict, truth gaps as 'unjudged', hung calls."""

import json
import shutil
import time
from pathlib import Path
from typing import Any

import broken_adapters as broken
import pytest
import transformers
from torch import nn

from pytest_invarlock.adapters.roles import HFCausalAdapter, HFMultimodalAdapter
from pytest_invarlock.api import check_adapter
from pytest_invarlock.hf_adapter.checks import SHOULD, all_checks, describe, level_of, rejection
from pytest_invarlock.hf_adapter.checks_doc import render
from pytest_invarlock.resources import validate

CONFORMANCE = Path(__file__).parents[1] / "conformance"
DOCS = Path(__file__).parents[1] / "docs" / "checks.md"


@pytest.fixture
def suite(pytester, monkeypatch):
    shutil.copytree(CONFORMANCE, pytester.path / "conformance")
    monkeypatch.setenv("PYTHONPATH", f"{pytester.path}:{Path(__file__).parent}")
    return pytester


def test_every_check_has_a_level_and_a_reason_for_it():
    for check in all_checks():
        assert level_of(check) in ("MUST", "SHOULD"), check.__name__
        assert getattr(check, "why", ""), f"{check.__name__} does not say why it is {level_of(check)}"


def test_docs_checks_md_is_up_to_date():
    assert DOCS.read_text(encoding="utf-8") == render(), (
        "docs/checks.md is stale: run `python -m pytest_invarlock.hf_adapter.checks_doc docs/checks.md`")


def test_a_should_finding_is_not_a_failure_unless_strict(fixture_dir):
    checks = [rejection.check_restore_rejects_tampered_blob]
    assert level_of(checks[0]) == SHOULD
    [lenient] = check_adapter(broken.NoChecksum(), fixture_dir("gpt2"), checks=checks)
    [strict] = check_adapter(broken.NoChecksum(), fixture_dir("gpt2"), checks=checks, strict=True)
    assert (lenient.outcome, lenient.level) == ("finding", "SHOULD")
    assert (strict.outcome, strict.level) == ("failed", "SHOULD")
    assert lenient.reason == strict.reason and "checksum" in lenient.reason


def test_strict_option_turns_findings_into_failures(suite, fixture_dir):
    args = ["conformance/test_rejection.py", "--invarlock-adapter=broken_adapters:NoChecksum",
            f"--invarlock-model={fixture_dir('gpt2')}", "--invarlock-report=r.json"]
    n = len(rejection.CHECKS)
    result = suite.runpytest_subprocess(*args)
    result.assert_outcomes(passed=n)
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        "*invarlock: *: conformant, not hardened (1 SHOULD finding)*",
        "SHOULD * on gpt2-*: check_restore_rejects_tampered_blob: *changed*checksum*"])
    recs = {r["check"]: r for r in json.loads((suite.path / "r.json").read_text())["records"]}
    assert recs["check_restore_rejects_tampered_blob"]["outcome"] == "finding"
    assert recs["check_restore_rejects_tampered_blob"]["level"] == "SHOULD"
    assert recs["check_restore_rejects_truncated_blob"]["level"] == "MUST"
    result = suite.runpytest_subprocess(*args, "--invarlock-strict")
    result.assert_outcomes(passed=n - 1, failed=1)
    assert result.ret == 1


def _unknown_family(path: Path) -> Path:
    """Save a tiny checkpoint of a family the suite has no truth rule for (BLOOM)."""
    config = transformers.BloomConfig(hidden_size=32, n_layer=2, n_head=4, vocab_size=64)
    transformers.BloomForCausalLM(config).save_pretrained(path)
    return path


def test_a_truth_gap_is_unjudged_never_the_adapters_failure(suite, tmp_path):
    from pytest_invarlock.hf_adapter.truth import RULES

    assert "bloom" not in RULES
    model = _unknown_family(tmp_path / "bloom-tiny")
    result = suite.runpytest_subprocess(
        "conformance/test_describe.py", "--invarlock-model", str(model),
        "--invarlock-adapter=independent_adapter:IndependentCausalAdapter",
        "--invarlock-report=r.json")
    assert result.ret == 0
    payload = json.loads((suite.path / "r.json").read_text())
    assert validate(payload, "lane_results") == []
    outcomes = {r["check"]: r["outcome"] for r in payload["records"]}
    assert "failed" not in outcomes.values() and "error" not in outcomes.values()
    assert outcomes["check_describe_layers"] == "unjudged"
    result.stdout.fnmatch_lines([
        "*the suite could not judge*",
        "UNJUDGED independent_adapter:IndependentCausalAdapter on bloom-tiny: "
        "check_describe_layers: suite cannot judge this model: "
        "*no truth rule for model_type 'bloom'*"])


class Hangs(HFCausalAdapter):
    """describe() never returns (a deadlock, an accidental network wait)."""

    def describe(self, model: nn.Module) -> dict[str, Any]:
        time.sleep(120)
        return super().describe(model)


def test_a_hung_adapter_call_is_an_error_naming_the_call(fixture_dir):
    start = time.monotonic()
    [result] = check_adapter(Hangs(), fixture_dir("gpt2"), checks=[describe.check_describe_layers],
                             timeout=1)
    assert time.monotonic() - start < 30
    assert result.outcome == "error"
    assert "Hangs.describe() did not return within 1 s" in result.reason


def test_a_hung_call_does_not_stop_the_run(suite, fixture_dir):
    (suite.path / "hang_adapter.py").write_text(
        "import time\nfrom pytest_invarlock.adapters.roles import HFCausalAdapter\n\n"
        "class Hangs(HFCausalAdapter):\n"
        "    def describe(self, model):\n        time.sleep(120)\n")
    start = time.monotonic()
    result = suite.runpytest_subprocess(
        "conformance/test_describe.py", "--invarlock-adapter=hang_adapter:Hangs",
        f"--invarlock-model={fixture_dir('gpt2')}", "--invarlock-timeout=1",
        "--invarlock-report=r.json")
    assert time.monotonic() - start < 100
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*invarlock: *: not conformant*"])
    records = json.loads((suite.path / "r.json").read_text())["records"]
    assert {r["outcome"] for r in records} == {"error"}
    assert len(records) == len(describe.CHECKS)
    assert all("Hangs.describe() did not return within 1 s" in r["message"] for r in records)


class DescribesTheLanguageModel(HFMultimodalAdapter):
    """Describes the language model of an image-text model, and says so in model_type/class."""

    def describe(self, model: nn.Module) -> dict[str, Any]:
        lm = model.model.language_model
        return {**super().describe(model), "model_type": lm.config.model_type,
                "model_class": type(lm).__name__}


class TypeOfTheLanguageModel(HFMultimodalAdapter):
    """Describes the language model's model_type, and the class of the model it was given."""

    def describe(self, model: nn.Module) -> dict[str, Any]:
        return {**super().describe(model), "model_type": model.config.text_config.model_type}


class MixesScopes(HFMultimodalAdapter):
    """Reports the whole model's model_type with the language model's class."""

    def describe(self, model: nn.Module) -> dict[str, Any]:
        return {**super().describe(model), "model_class": type(model.model.language_model).__name__}


@pytest.mark.parametrize("adapter", [HFMultimodalAdapter, DescribesTheLanguageModel,
                                     TypeOfTheLanguageModel])
def test_both_documented_multimodal_descriptions_pass(adapter, fixture_dir):
    [result] = check_adapter(adapter(), fixture_dir("llava"),
                             checks=[describe.check_describe_metadata])
    assert result.outcome == "passed", result.reason


def test_a_multimodal_description_must_keep_one_scope(fixture_dir):
    [result] = check_adapter(MixesScopes(), fixture_dir("llava"),
                             checks=[describe.check_describe_metadata])
    assert result.outcome == "failed"
    assert "describe()['model_class'] is 'LlamaModel'" in result.reason
    assert "expected 'LlavaForConditionalGeneration' for model_type 'llava'" in result.reason


class HangsOnShortBlobs(HFCausalAdapter):
    """restore() hangs on a truncated snapshot (reads forever for the missing bytes)."""

    def restore(self, model: nn.Module, blob: bytes) -> None:
        if len(blob) < 1000:
            time.sleep(120)
        super().restore(model, blob)


def test_a_hang_inside_a_refusal_is_an_error_not_a_refusal(fixture_dir):
    start = time.monotonic()
    [result] = check_adapter(HangsOnShortBlobs(), fixture_dir("gpt2"), timeout=2,
                             checks=[rejection.check_restore_rejects_truncated_blob])
    assert time.monotonic() - start < 30
    assert result.outcome == "error"
    assert "HangsOnShortBlobs.restore() did not return within 2 s" in result.reason


def test_an_earlier_timer_is_kept_and_fires_on_time():
    from pytest_invarlock.errors import CallTimeout
    from pytest_invarlock.verdicts import deadline

    start = time.monotonic()
    with pytest.raises(CallTimeout), deadline(1), deadline(30):
        time.sleep(10)
    assert time.monotonic() - start < 5


class DropsTheLastLayer(HFCausalAdapter):
    """load_model() returns a model missing its last layer (a botched truncation)."""

    def load_model(self, model_id: str, device: str = "auto", **kw: Any) -> nn.Module:
        model = super().load_model(model_id, device, **kw)
        del model.model.layers[-1]
        return model


def test_a_model_inconsistent_with_its_config_fails_never_unjudged(fixture_dir):
    results = check_adapter(DropsTheLastLayer(), fixture_dir("llama-gqa"),
                            checks=[describe.check_describe_layers])
    assert [r.outcome for r in results] == ["failed"]
    assert "the model disagrees with its own config" in results[0].reason
    assert "load_model() must return the checkpoint's model" in results[0].reason


def test_a_should_finding_passes_in_a_users_own_test(pytester, fixture_dir):
    pytester.makepyfile(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from broken_adapters import NoChecksum
        from pytest_invarlock.api import parametrize_with_checks, verify
        from pytest_invarlock.hf_adapter.checks import rejection

        @parametrize_with_checks([NoChecksum()], [{str(fixture_dir("gpt2"))!r}],
                                 checks=[rejection.check_restore_rejects_tampered_blob])
        def test_mine(adapter, model, check):
            verify(adapter, model, check)
    """)
    pytester.runpytest_subprocess("-q").assert_outcomes(passed=1)


class ReturnsTheTempRoot(HFCausalAdapter):
    """snapshot_chunked() writes into, and returns, the temporary directory itself."""

    def snapshot_chunked(self, model: nn.Module, **kw: Any) -> str:
        import tempfile

        path = super().snapshot_chunked(model, **kw)
        for f in Path(path).iterdir():
            f.replace(Path(tempfile.gettempdir()) / f.name)
        Path(path).rmdir()
        return tempfile.gettempdir()


def test_the_suite_never_deletes_a_directory_it_did_not_get_a_snapshot_in(tmp_path, monkeypatch,
                                                                            fixture_dir):
    import tempfile

    from pytest_invarlock.hf_adapter.checks import roundtrip

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (tmp_path / "precious.txt").write_text("keep me")
    check_adapter(ReturnsTheTempRoot(), fixture_dir("gpt2"),
                  checks=[roundtrip.check_snapshot_roundtrip_chunked])
    assert (tmp_path / "precious.txt").read_text() == "keep me"
