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
from pytest_invarlock.checks import SHOULD, all_checks, describe, level_of, rejection
from pytest_invarlock.checks_doc import render
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
        "docs/checks.md is stale: run `python -m pytest_invarlock.checks_doc docs/checks.md`")


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
    from pytest_invarlock.truth import RULES

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
        "UNJUDGED independent_causal on bloom-tiny: check_describe_layers: suite cannot judge this model: "
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


class MixesScopes(HFMultimodalAdapter):
    """Reports the language model's model_type with the whole model's class."""

    def describe(self, model: nn.Module) -> dict[str, Any]:
        lm = model.model.language_model
        return {**super().describe(model), "model_type": lm.config.model_type}


@pytest.mark.parametrize("adapter", [HFMultimodalAdapter, DescribesTheLanguageModel])
def test_both_documented_multimodal_descriptions_pass(adapter, fixture_dir):
    [result] = check_adapter(adapter(), fixture_dir("llava"),
                             checks=[describe.check_describe_metadata])
    assert result.outcome == "passed", result.reason


def test_a_multimodal_description_must_keep_one_scope(fixture_dir):
    [result] = check_adapter(MixesScopes(), fixture_dir("llava"),
                             checks=[describe.check_describe_metadata])
    assert result.outcome == "failed"
    assert "describe()['model_class'] is 'LlavaForConditionalGeneration'" in result.reason
    assert "for model_type 'llama'" in result.reason
