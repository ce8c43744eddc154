"""Capability claims decide what the snapshot checks demand; the committed contract is checked."""

from typing import Any, ClassVar

import torch

from pytest_invarlock.adapters.roles import HFCausalAdapter
from pytest_invarlock.api import check_adapter
from pytest_invarlock.errors import SnapshotError
from pytest_invarlock.hf_adapter import capabilities
from pytest_invarlock.hf_adapter.checks import roundtrip
from pytest_invarlock.registry import BUILTIN_DIST, discover
from pytest_invarlock.resources import load_json, validate

ROUNDTRIPS = [roundtrip.check_snapshot_roundtrip_bytes, roundtrip.check_snapshot_roundtrip_chunked]


def claims(level: str) -> dict[str, Any]:
    return {"snapshot_restore": level, "guard_coverage": "full", "platform_support": "all",
            "runtime_constraints": [], "required_extra": None, "degraded_modes": []}


class Approximate(HFCausalAdapter):
    capabilities: ClassVar[dict[str, Any]] = claims("full")

    def restore(self, model, blob):
        super().restore(model, blob)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).to(p.dtype))

    restore_chunked = None  # only the bytes path matters here


class ApproximateBestEffort(Approximate):
    capabilities: ClassVar[dict[str, Any]] = claims("best_effort")


class RefusesBestEffort(HFCausalAdapter):
    capabilities: ClassVar[dict[str, Any]] = claims("best_effort")

    def restore(self, model, blob):
        raise SnapshotError("restore of quantized weights is not supported; reload the model")

    def restore_chunked(self, model, path):
        raise SnapshotError("restore of quantized weights is not supported; reload the model")


class ExactButClaimsNone(HFCausalAdapter):
    capabilities: ClassVar[dict[str, Any]] = claims("none")


class NoSnapshots(HFCausalAdapter):
    capabilities: ClassVar[dict[str, Any]] = claims("none")

    def snapshot(self, model):
        raise NotImplementedError("this backend cannot snapshot; reload the model instead")

    def snapshot_chunked(self, model, **kwargs):
        raise NotImplementedError("this backend cannot snapshot; reload the model instead")


def outcomes(adapter, fixture_dir, checks=ROUNDTRIPS):
    return {r.check: (r.outcome, r.reason)
            for r in check_adapter(adapter, fixture_dir("llama-gqa"), checks=checks)}


def test_full_claim_with_an_approximate_restore_fails(fixture_dir):
    outcome, reason = outcomes(Approximate(), fixture_dir)["check_snapshot_roundtrip_bytes"]
    assert outcome == "failed" and "not bit-identical" in reason


def test_best_effort_claim_with_a_clean_refusal_passes_every_check(fixture_dir):
    results = check_adapter(RefusesBestEffort(), fixture_dir("llama-gqa"))
    assert {r.outcome for r in results} <= {"passed", "skipped"}, [
        (r.check, r.reason) for r in results if r.outcome not in ("passed", "skipped")]


def test_best_effort_claim_never_allows_silent_corruption(fixture_dir):
    outcome, reason = outcomes(ApproximateBestEffort(), fixture_dir)[
        "check_snapshot_roundtrip_bytes"]
    assert outcome == "failed" and "never silently" in reason


def test_none_claim_that_round_trips_exactly_is_reported_as_an_under_claim(fixture_dir):
    outcome, reason = outcomes(ExactButClaimsNone(), fixture_dir)[
        "check_snapshot_roundtrip_bytes"]
    assert outcome == "passed" and reason.startswith("under-claim")


def test_none_claim_with_clear_errors_passes(fixture_dir):
    results = check_adapter(NoSnapshots(), fixture_dir("llama-gqa"))
    assert {r.outcome for r in results} <= {"passed", "skipped"}, [
        (r.check, r.reason) for r in results if r.outcome not in ("passed", "skipped")]


def test_committed_contract_validates_and_lists_exactly_the_builtin_adapters():
    committed = load_json("contracts", "adapter_capabilities.json")
    assert validate(committed, "adapter_capabilities") == []
    builtin = {n for n, s in discover().adapters.items() if s.distribution == BUILTIN_DIST}
    assert set(capabilities.contract()) == builtin
