"""The support matrix: deterministic, order-independent, tiered by written rules, gated by --check."""

import json
import random
from pathlib import Path

import pytest

from pytest_invarlock import matrix
from pytest_invarlock.resources import data_path, validate

FIXTURES = {"gpt2", "llama-gqa"}


def results(lane, outcomes, model="gpt2", family="gpt2"):
    records = [{"adapter": "hf_causal", "model": model, "check": f"check_{i}", "outcome": o,
                "message": "", "family": family, "role": "causal"}
               for i, o in enumerate(outcomes)]
    prov = {"python": "3.11", "platform": "linux", "machine": "x86_64", "packages": {},
            "device": {"type": lane, "name": None}}
    return {"format_version": "invarlock-lane-results-v1", "lane": lane, "provenance": prov,
            "adapters": [], "records": records}


def test_inputs_in_any_order_give_identical_output():
    inputs = [("results/cpu.json", results("cpu", ["passed", "skipped"])),
              ("results/cuda.json", results("cuda", ["passed", "failed"])),
              ("results/real.json", results("cpu", ["passed"], model="minilm", family="bert"))]
    texts = set()
    for _ in range(5):
        random.shuffle(inputs)
        texts.add(matrix.render(matrix.build(inputs, FIXTURES)))
    assert len(texts) == 1
    built = json.loads(texts.pop())
    assert validate(built, "support_matrix") == []
    tiers = {lane["lane_id"]: lane["support_tier"] for lane in built["lanes"]}
    assert tiers == {"gpt2-causal-hf-cpu": "supported_experimental",
                     "gpt2-causal-hf-cuda": "community_experimental",
                     "bert-causal-hf-cpu": "published_basis"}


def test_a_failure_on_any_machine_makes_the_lane_failing():
    built = matrix.build([("a.json", results("cpu", ["passed"])),
                          ("b.json", results("cpu", ["failed"]))], FIXTURES)
    (lane,) = built["lanes"]
    assert lane["evidence_status"] == "failing"
    assert lane["support_tier"] == "community_experimental"
    assert lane["evidence"]["failing_checks"] == ["check_0"]
    assert lane["provenance_source"] == "a.json, b.json"


def test_nothing_run_gains_no_tier():
    (lane,) = matrix.build([("a.json", results("cpu", ["skipped"]))], FIXTURES)["lanes"]
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
    assert '-      "support_tier": "published_basis"' in captured.out
    assert "is stale" in captured.err


def test_invalid_results_are_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"lane": "cpu"}))
    assert matrix.main([str(bad), "--output", str(tmp_path / "m.json")]) == 2


@pytest.mark.parametrize("name", ["support_matrix"])
def test_committed_contract_validates(name):
    committed = json.loads(Path(data_path("contracts", f"{name}.json")).read_text())
    assert validate(committed, name) == []
