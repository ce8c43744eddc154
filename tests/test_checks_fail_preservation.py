"""The preservation and value checks: each fails for an adapter with exactly its bug, and says so."""

import math
import os

import broken_preservation as broken
import pytest
import torch

from pytest_invarlock.adapters.roles import HFCausalAdapter
from pytest_invarlock.api import check_adapter
from pytest_invarlock.errors import CheckNotApplicable
from pytest_invarlock.hf_adapter import fresh
from pytest_invarlock.hf_adapter.checks import CheckContext, preservation, values

CHECKS = [*values.CHECKS, *preservation.CHECKS]
FRESH = values.check_snapshot_restores_in_a_fresh_process


def test_every_check_has_a_breaking_case():
    assert {case[3] for case in broken.CASES} == {c.__name__ for c in CHECKS}


@pytest.mark.parametrize("fixture", ["gpt2", "llama-gqa-tied", "llama-gqa"])
def test_reference_adapter_passes(fixture, fixture_dir):
    results = check_adapter(HFCausalAdapter(), fixture_dir(fixture), checks=CHECKS,
                            reference=True)
    assert [(r.check, r.outcome, r.reason) for r in results if r.outcome != "passed"] == []


@pytest.mark.parametrize(("adapter", "fixture", "reference", "check", "words"), broken.CASES,
                         ids=[f"{c[0].__name__}-{c[3]}" for c in broken.CASES])
def test_broken_adapter_fails_exactly_its_check(adapter, fixture, reference, check, words,
                                                fixture_dir):
    results = check_adapter(adapter(), fixture_dir(fixture), checks=CHECKS, reference=reference)
    failing = {r.check: r.reason for r in results if r.outcome not in ("passed", "skipped")}
    assert set(failing) == {check}, failing
    assert [r.outcome for r in results if r.check == check] == ["failed"]
    for word in words:
        assert word in failing[check]


def test_fresh_process_helper_that_dies_fails_clearly(fixture_dir):
    [result] = check_adapter(broken.ExitsInFreshProcess(), fixture_dir("gpt2"), checks=[FRESH])
    assert result.outcome == "failed", result
    assert "in a fresh Python process" in result.reason
    assert "exited with status 3 before answering" in result.reason


def test_fresh_process_helper_that_hangs_is_bounded(fixture_dir, monkeypatch):
    [warm] = check_adapter(HFCausalAdapter(), fixture_dir("gpt2"), checks=[FRESH])
    assert warm.outcome == "passed", warm  # the helper is up: the bound below is the hang's
    monkeypatch.setenv(fresh.TIMEOUT_ENV, "5")
    [result] = check_adapter(broken.HangsInFreshProcess(), fixture_dir("gpt2"), checks=[FRESH])
    assert result.outcome == "failed", result
    assert "did not answer within 5 s" in result.reason
    assert fresh.TIMEOUT_ENV in result.reason
    monkeypatch.delenv(fresh.TIMEOUT_ENV)
    [after] = check_adapter(HFCausalAdapter(), fixture_dir("gpt2"), checks=[FRESH])
    assert after.outcome == "passed", after  # a new helper replaced the hung one


def test_fresh_process_check_needs_a_checkpoint_path(fixture_dir):
    adapter = HFCausalAdapter()
    model = adapter.load_model(fixture_dir("gpt2"), device="cpu")
    with pytest.raises(CheckNotApplicable, match="no checkpoint path"):
        FRESH(adapter, model, CheckContext("hf_causal", "gpt2", model_path=None))


def test_fresh_process_helper_reports_an_unimportable_adapter():
    helper = fresh.Helper()
    try:
        answer = helper.request({"selector": "no_such_module_xyz:Adapter", "model_path": "-",
                                 "device": "cpu", "blob": os.devnull}, timeout=120)
    finally:
        helper.stop()
    assert answer["ok"] is False and answer["stage"] == "import"
    assert "no_such_module_xyz" in answer["error"]


def test_what_an_adapter_prints_in_the_fresh_process_is_not_an_answer(fixture_dir):
    [result] = check_adapter(broken.PrintsWhileRestoring(), fixture_dir("gpt2"), checks=[FRESH])
    assert result.outcome == "passed", result


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_special_patterns_are_what_they_say(dtype):
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
    patterns = values.special_patterns(dtype)
    assert len({bits for _, bits in patterns}) == len(patterns)
    decoded = torch.tensor([bits for _, bits in patterns], dtype=ints).view(dtype).double()
    for (label, _), value in zip(patterns, decoded.tolist(), strict=True):
        if "NaN" in label:
            assert math.isnan(value), label
        elif "inf" in label:
            assert value == (math.inf if label == "+inf" else -math.inf)
        elif label == "-0.0":
            assert value == 0.0 and math.copysign(1.0, value) < 0
        else:
            assert 0 < abs(value) < torch.finfo(dtype).tiny, label
