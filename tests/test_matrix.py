"""The support matrix: deterministic, order-independent, tiered by written rules, gated by --check."""

import json
import random
from pathlib import Path

import pytest

from pytest_invarlock import matrix
from pytest_invarlock.resources import data_path, validate

FIXTURES = {"gpt2", "llama-gqa"}


def evidence(rec, lane):
    """Add what the plugin writes into every record: profile, source and the profile's lane id."""
    from pytest_invarlock.hf_adapter import PROFILE
    from pytest_invarlock.profile import Case, labels

    case = Case("hf_adapter", rec["adapter"], rec["adapter"], rec["model"], None,
                labels(family=rec["family"], role=rec["role"]))
    return rec | {"profile": "hf_adapter", "lane_id": PROFILE.lane_id(case, lane),
                  "source": "fixture" if rec["model"] in FIXTURES else "path"}


def results(lane, outcomes, model="gpt2", family="gpt2"):
    records = [evidence({"adapter": "hf_causal", "model": model, "check": f"check_{i}",
                         "outcome": o, "message": "", "family": family, "role": "causal"}, lane)
               for i, o in enumerate(outcomes)]
    prov = {"python": "3.11", "platform": "linux", "machine": "x86_64",
            "packages": {"torch": "2.13.0"}, "device": {"type": lane, "name": None},
            "commit": "0" * 40}
    return {"format_version": "invarlock-lane-results-v1", "lane": lane, "provenance": prov,
            "adapters": [], "records": records}


def test_inputs_in_any_order_give_identical_output():
    inputs = [("results/cpu.json", results("cpu", ["passed", "skipped"])),
              ("results/cuda.json", results("cuda", ["passed", "failed"])),
              ("results/real.json", results("cpu", ["passed"], model="minilm", family="bert"))]
    texts = set()
    for _ in range(5):
        random.shuffle(inputs)
        texts.add(matrix.render(matrix.build(inputs)))
    assert len(texts) == 1
    built = json.loads(texts.pop())
    assert validate(built, "support_matrix") == []
    tiers = {lane["lane_id"]: lane["support_tier"] for lane in built["lanes"]}
    assert tiers == {"gpt2-causal-hf-cpu": "supported_experimental",
                     "gpt2-causal-hf-cuda": "community_experimental",
                     "bert-causal-hf-cpu": "published_basis"}


def test_a_failure_on_any_machine_makes_the_lane_failing_and_is_reported():
    built = matrix.build([("a.json", results("cpu", ["passed"])),
                          ("b.json", results("cpu", ["failed"]))])
    assert built["conflicts"] == ["gpt2-causal-hf-cpu: passing in a.json, failing in b.json; "
                                  "rule: a failure anywhere makes the lane failing"]
    (lane,) = built["lanes"]
    assert lane["provenance"]["packages"]["torch"] == ["2.13.0"]
    assert lane["evidence_status"] == "failing"
    assert lane["support_tier"] == "community_experimental"
    assert lane["evidence"]["failing_checks"] == ["check_0"]
    assert lane["provenance_source"] == "a.json, b.json"


def test_nothing_run_gains_no_tier():
    (lane,) = matrix.build([("a.json", results("cpu", ["skipped"]))])["lanes"]
    assert (lane["evidence_status"], lane["support_tier"]) == ("not_run", "community_experimental")


def test_check_fails_with_a_diff_naming_the_lane(tmp_path, capsys):
    source = tmp_path / "cpu.json"
    source.write_text(json.dumps(results("cpu", ["passed"])))
    out = tmp_path / "matrix.json"
    assert matrix.main([str(source), "--output", str(out)]) == 0
    assert matrix.main([str(source), "--output", str(out), "--check"]) == 0
    out.write_text(out.read_text().replace('"supported_experimental"', '"published_basis"', 1)
                   .replace('"support_tier": "supported_experimental"',
                            '"support_tier": "published_basis"'))
    capsys.readouterr()
    assert matrix.main([str(source), "--output", str(out), "--check"]) == 1
    captured = capsys.readouterr()
    assert ("lane gpt2-causal-hf-cpu: support_tier is 'published_basis' in the committed file, "
            "'supported_experimental' from the evidence") in captured.out
    assert '-      "support_tier": "published_basis"' in captured.out
    assert "is stale" in captured.err


def test_docs_are_generated_with_every_lane(tmp_path):
    from html.parser import HTMLParser

    source = tmp_path / "cpu.json"
    source.write_text(json.dumps(results("cpu", ["passed", "failed"])))
    docs = tmp_path / "docs"
    assert matrix.main([str(source), "--output", str(tmp_path / "m.json"), "--docs",
                        str(docs)]) == 0
    built = json.loads((tmp_path / "m.json").read_text())
    page = (docs / "support-matrix.html").read_text()
    HTMLParser().feed(page)  # well-formed enough for a browser; no scripts or external files
    assert "<script" not in page and "http" not in page.split("</style>")[1]
    for lane in built["lanes"]:
        assert lane["lane_id"] in page
        assert lane["lane_id"] in (docs / "support-matrix.md").read_text()
    assert "check_1" in page  # the failing check is shown


def test_invalid_results_are_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"lane": "cpu"}))
    assert matrix.main([str(bad), "--output", str(tmp_path / "m.json")]) == 2


@pytest.mark.parametrize("name", ["support_matrix", "adapter_capabilities"])
def test_committed_contracts_validate(name):
    committed = json.loads(Path(data_path("contracts", f"{name}.json")).read_text())
    assert validate(committed, name) == []


def test_committed_contracts_agree_with_each_other():
    from pytest_invarlock.hf_adapter import PROFILE
    from pytest_invarlock.hf_adapter.capabilities import contract

    lanes = json.loads(Path(data_path("contracts", "support_matrix.json")).read_text())["lanes"]
    # the capabilities contract is the hf_adapter profile's (TransformerLens adapters declare none)
    assert {lane["adapter"] for lane in lanes if lane["runtime"] in PROFILE.lanes} <= set(contract())


@pytest.mark.parametrize(("outcomes", "levels", "conformance", "status"), [
    (["passed", "passed"], ["MUST", "SHOULD"], "hardened", "passing"),
    (["passed", "finding"], ["MUST", "SHOULD"], "conformant", "passing"),
    (["passed", "failed"], ["MUST", "SHOULD"], "conformant", "passing"),  # --invarlock-strict
    (["failed", "passed"], ["MUST", "SHOULD"], "not_conformant", "failing"),
    (["error", "finding"], ["MUST", "SHOULD"], "not_conformant", "failing"),
    (["unjudged", "skipped"], ["MUST", "MUST"], "not_run", "not_run"),
])
def test_only_must_checks_decide_conformance_and_tier(outcomes, levels, conformance, status):
    payload = results("cpu", outcomes)
    for rec, level in zip(payload["records"], levels, strict=True):
        rec["level"] = level
    built = matrix.build([("a.json", payload)])
    assert validate(built, "support_matrix") == []
    (lane,) = built["lanes"]
    assert (lane["conformance"], lane["evidence_status"]) == (conformance, status)
    ev = lane["evidence"]
    assert ev["should_findings"] == (["check_1"] if conformance == "conformant" else
                                     ["check_1"] if outcomes[1] == "finding" else [])
    assert ev["unjudged_checks"] == (["check_0"] if "unjudged" in outcomes else [])
    assert (lane["support_tier"] == "supported_experimental") == (status == "passing")
