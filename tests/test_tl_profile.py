"""The transformer_lens profile: real TransformerLens adapters on tiny real models.

What needs transformer-lens skips without it (``nox -s tests`` installs it; the whole profile
runs in ``nox -s lane-tl-cpu``). Discovery and planning are tested without it: they read
TransformerLens's factory table as source and import nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_invarlock.tl import discovery
from pytest_invarlock.tl.profile import PROFILE, family, role

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "contracts" / "schemas" / "lane_results.schema.json"
HAS_TL = discovery.installed_version() is not None
needs_tl = pytest.mark.skipif(not HAS_TL, reason="transformer-lens is not installed "
                              "(pip install 'transformer-lens==4.3.*'; nox -s tests installs it)")
LLAMA = "LlamaForCausalLM"


# --------------------------------------------------------------------------- discovery, planning


FACTORY = '''
from transformer_lens.model_bridge.supported_architectures import (
    LlamaArchitectureAdapter,
    GPT2ArchitectureAdapter as Gpt2,
)
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": LlamaArchitectureAdapter,
    "GPT2LMHeadModel": Gpt2,
    "GPT2LMHeadCustomModel": Gpt2,
}
'''


def test_the_factory_table_is_read_as_source():
    found = discovery.parse_table(FACTORY)
    module = "transformer_lens.model_bridge.supported_architectures"
    assert found == {"LlamaForCausalLM": f"{module}:LlamaArchitectureAdapter",
                     "GPT2LMHeadModel": f"{module}:GPT2ArchitectureAdapter",
                     "GPT2LMHeadCustomModel": f"{module}:GPT2ArchitectureAdapter"}


@pytest.mark.parametrize("source", [
    "SUPPORTED_ARCHITECTURES = {'A': make()}",           # a value that is not an imported name
    "SUPPORTED_ARCHITECTURES = dict(A=Adapter)",          # not a literal
    "from m import A\nSUPPORTED_ARCHITECTURES = {**OTHER, 'A': A}",  # an unpacking
    "OTHER = {}",                                         # no table
])
def test_a_table_of_another_shape_is_not_guessed(source: str):
    assert discovery.parse_table(source) == {}


class _Listed:
    """A class a profile instantiates per subject (it takes an argument)."""

    def __init__(self, config: object) -> None:
        self.config = config

    def get_component_mapping(self) -> dict[str, object]:
        return {}


def test_a_profile_listing_replaces_entry_points_and_hands_load_the_class():
    """Requirements.listing lists implementations; construct=False makes instantiate() the class."""
    from pytest_invarlock.registry import AdapterSpec, Requirements, discover

    def listing(needs: Requirements) -> list[AdapterSpec]:
        return [AdapterSpec("Listed", f"{__name__}:_Listed", "somedist", "1.0", "g",
                            requirements=needs)]

    needs = Requirements("Thing", ("no.such.group",), ("get_component_mapping",),
                         ("get_component_mapping",), construct=False, listing=listing)
    found = discover(needs)
    assert list(found.adapters) == ["Listed"]
    assert found.adapters["Listed"].instantiate() is _Listed


def test_family_and_role_come_from_the_architecture_name():
    assert (family("GPTNeoXForCausalLM"), role("GPTNeoXForCausalLM")) == ("gptneox", "causal")
    assert (family("BertForMaskedLM"), role("BertForMaskedLM")) == ("bert", "mlm")
    assert role("T5ForConditionalGeneration") == "conditional"
    assert role("TransformerLensNative") == "other"


@needs_tl
def test_discovery_lists_every_factory_architecture_without_importing_it():
    """The listing matches the factory's own table, and reading it imports nothing heavy."""
    code = ("import sys; from pytest_invarlock.tl import discovery as d; "
            "r = d.registrations(); print(len(r), len({x.target for x in r}), "
            "'torch' in sys.modules, 'transformer_lens' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    classes = {cls.__name__ for cls in SUPPORTED_ARCHITECTURES.values()}
    assert out == [str(len(SUPPORTED_ARCHITECTURES)), str(len(classes)), "False", "False"]
    listed = {r.architecture: r.class_name for r in discovery.registrations()
              if r.distribution == discovery.DISTRIBUTION}
    assert listed == {arch: cls.__name__ for arch, cls in SUPPORTED_ARCHITECTURES.items()}


@needs_tl
def test_lane_ids_name_the_architecture_and_a_foreign_adapter():
    from pytest_invarlock.profile import Case

    own = Case("transformer_lens", "LlamaArchitectureAdapter", "x", LLAMA, None)
    other = Case("transformer_lens", "broken_tl:ShiftsLogits", "x", LLAMA, None)
    assert PROFILE.lane_id(own, "tl-cpu") == "LlamaForCausalLM-tl-cpu"
    assert PROFILE.lane_id(other, "tl-cpu") == (
        "LlamaForCausalLM-tl-cpu-broken_tl:ShiftsLogits")


# --------------------------------------------------------------------------- checks


def _failing(adapter: type, model: str = LLAMA) -> dict[str, str]:
    from pytest_invarlock.api import check_adapter
    from pytest_invarlock.tl.checks import CHECKS

    results = check_adapter(adapter, model, checks=CHECKS, timeout=0)
    errors = [f"{r.check}: {r.reason}" for r in results if r.outcome == "error"]
    assert not errors, errors
    return {r.check: r.reason for r in results if r.outcome in ("failed", "finding")}


@needs_tl
def test_llama_passes_every_check():
    from transformer_lens.model_bridge.supported_architectures import LlamaArchitectureAdapter

    assert _failing(LlamaArchitectureAdapter) == {}


def _broken_cases() -> list[str]:
    if not HAS_TL:
        return ["transformer-lens-missing"]
    import broken_tl as broken

    return sorted(broken.CASES)


@needs_tl
@pytest.mark.parametrize("name", _broken_cases())
def test_broken_adapter_fails_exactly_its_check(name: str):
    import broken_tl as broken

    check, words = broken.CASES[name]
    failing = _failing(getattr(broken, name))
    assert set(failing) == {check}, failing
    for word in words:
        assert word in failing[check], (word, failing[check])


@needs_tl
def test_every_check_has_a_breaking_case():
    import broken_tl as broken

    from pytest_invarlock.tl.checks import CHECKS

    assert {check for check, _ in broken.CASES.values()} == {c.__name__ for c in CHECKS}


# --------------------------------------------------------------------------- the lane, end to end


@needs_tl
def test_the_lane_runs_a_subset_and_writes_valid_results(pytester: pytest.Pytester):
    """Registered adapters and a module:Class subclass, selected by name, in one lane run.

    llama passes every check; the subclass (planned on the architecture its base class is
    registered for) fails exactly its check, in a lane of its own; gpt_neox's fused QKV, which
    the bridge computes with private copies of, fails the live-weights check. The results file
    validates against the schema and names transformer-lens in its provenance.
    """
    import jsonschema

    pytester.copy_example(str(ROOT / "conformance" / "test_transformer_lens.py"))
    pytester.copy_example(str(ROOT / "tests" / "broken_tl.py"))
    report = pytester.path / "tl-cpu.json"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--invarlock-lane=tl-cpu", f"--invarlock-report={report}",
        "--invarlock-adapter=LlamaArchitectureAdapter", "--invarlock-adapter=NeoxArchitectureAdapter",
        "--invarlock-adapter=broken_tl:ShiftsLogits")
    result.stdout.fnmatch_lines(["*transformer_lens: 1?? adapters (transformer-lens 4.3*"])
    payload = json.loads(report.read_text())
    jsonschema.validate(payload, json.loads(SCHEMA.read_text()))
    failing = {(r["adapter"], r["model"], r["check"]) for r in payload["records"]
               if r["outcome"] != "passed"}
    assert ("broken_tl:ShiftsLogits", LLAMA, "check_bridge_logits_match_hf") in failing
    assert ("NeoxArchitectureAdapter", "GPTNeoXForCausalLM",
            "check_bridge_uses_live_weights") in failing
    assert not {f for f in failing if f[0] == "LlamaArchitectureAdapter"}
    assert {f for f in failing if f[0] == "broken_tl:ShiftsLogits"} == {
        ("broken_tl:ShiftsLogits", LLAMA, "check_bridge_logits_match_hf")}
    lanes = {r["adapter"]: r["lane_id"] for r in payload["records"]}
    assert lanes == {"LlamaArchitectureAdapter": "LlamaForCausalLM-tl-cpu",
                     "NeoxArchitectureAdapter": "GPTNeoXForCausalLM-tl-cpu",
                     "broken_tl:ShiftsLogits": "LlamaForCausalLM-tl-cpu-broken_tl:ShiftsLogits"}
    assert payload["provenance"]["packages"]["transformer-lens"].startswith("4.3")


@needs_tl
def test_booting_a_vision_checkpoint_installs_nothing():
    """TransformerLens 4.3 pip-installs torchvision when it boots a vision model without it.

    The boot checks run it with that disabled: the environment's distributions are unchanged.
    """
    import importlib.util
    from importlib.metadata import distributions

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: nothing TransformerLens would install")
    from transformer_lens.model_bridge.supported_architectures import ViTArchitectureAdapter

    from pytest_invarlock.api import check_adapter
    from pytest_invarlock.tl.checks import check_boot_from_saved_checkpoint

    before = sorted((d.metadata["Name"], d.version) for d in distributions())
    check_adapter(ViTArchitectureAdapter, "ViTModel", checks=[check_boot_from_saved_checkpoint])
    assert sorted((d.metadata["Name"], d.version) for d in distributions()) == before
    assert importlib.util.find_spec("torchvision") is None
