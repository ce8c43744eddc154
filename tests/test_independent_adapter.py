"""A correct adapter written independently of the reference ones is never failed by the suite.

tests/independent_adapter.py was written from the README and the protocol alone (no checksum,
accepts BartForCausalLM). Over every bundled fixture it must have no failing or erroring record
outside SHOULD level: anything else is a false positive of the suite.
"""

import json
import shutil
from pathlib import Path

CONFORMANCE = Path(__file__).parents[1] / "conformance"


def test_independent_adapter_has_no_must_failure_on_the_bundled_fixtures(pytester, monkeypatch):
    shutil.copytree(CONFORMANCE, pytester.path / "conformance")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    result = pytester.runpytest_subprocess(
        "conformance", "-p", "xdist", "-n", "2", "--dist", "loadgroup",
        "--invarlock-adapter=independent_adapter:IndependentCausalAdapter",
        "--invarlock-report=r.json")
    records = json.loads((pytester.path / "r.json").read_text())["records"]
    bad = [f"{r['model']}: {r['check']}: {r['outcome']}: {r['message']}" for r in records
           if r["outcome"] in ("failed", "error", "unjudged") and r["level"] != "SHOULD"]
    assert bad == []
    assert result.ret == 0
    models = {r["model"] for r in records if r["outcome"] == "passed"}
    assert any(m.startswith("bart") for m in models), sorted(models)  # as BartForCausalLM
    assert {r["outcome"] for r in records} <= {"passed", "skipped", "finding"}
