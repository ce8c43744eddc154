"""A good citizen: no registry hijack, no global side effects, errors naming their cause.

One test per defect found by trying pytest-invarlock beside InvarLock and as a new user would;
each fails if that defect comes back.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from pytest_invarlock.hf_adapter.checks import describe, loading
from pytest_invarlock.hf_adapter.protocol import GROUP, OWN_GROUP
from pytest_invarlock.resources import validate

CONFORMANCE = Path(__file__).parents[1] / "conformance"


@pytest.fixture
def suite(pytester, monkeypatch):
    shutil.copytree(CONFORMANCE, pytester.path / "conformance")
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    return pytester


def _distribution(site, name, group, entries):
    info = site / f"{name}-0.3.7.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3.7\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entries}")


#: Stands in for InvarLock 0.3.7: registers hf_causal and hf_mlm under invarlock.adapters.
FAKE_INVARLOCK = """
from pytest_invarlock.adapters.roles import HFCausalAdapter, HFMLMAdapter

class HF_Causal_Adapter(HFCausalAdapter):
    name = "hf_causal"

class HF_MLM_Adapter(HFMLMAdapter):
    name = "hf_mlm"
"""


@pytest.fixture
def beside_invarlock(suite, tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "fake_invarlock.py").write_text(FAKE_INVARLOCK)
    _distribution(site, "invarlock", GROUP, "hf_causal = fake_invarlock:HF_Causal_Adapter\n"
                  "hf_mlm = fake_invarlock:HF_MLM_Adapter\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(suite.path)]))
    return suite


def records(path):
    payload = json.loads(Path(path).read_text())
    assert validate(payload, "lane_results") == []
    return payload


def test_reference_adapters_do_not_register_under_invarlocks_group():
    ours = [ep for ep in entry_points(group=GROUP)
            if ep.dist is not None and ep.dist.name == "pytest-invarlock"]
    assert ours == []  # InvarLock's get_adapter() resolves these names: never ours
    own = {ep.name for ep in entry_points(group=OWN_GROUP)}
    assert {"hf_causal", "hf_mlm", "hf_seq2seq", "hf_multimodal", "hf_auto"} <= own


def test_invarlocks_registry_returns_its_own_classes_beside_us(beside_invarlock):
    """What InvarLock's registry does: look its names up in the invarlock.adapters group."""
    probe = textwrap.dedent("""
        from importlib.metadata import entry_points
        found = {}
        for ep in entry_points(group="invarlock.adapters"):
            found.setdefault(ep.name, []).append(ep.value)
        print(sorted(found.items()))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, env={**os.environ}).stdout
    assert out.strip() == ("[('hf_causal', ['fake_invarlock:HF_Causal_Adapter']), "
                           "('hf_mlm', ['fake_invarlock:HF_MLM_Adapter'])]")


def test_both_hf_causals_run_in_one_run_by_qualified_selectors(beside_invarlock, fixture_dir):
    result = beside_invarlock.runpytest_subprocess(
        "conformance/test_describe.py", "--invarlock-adapter=invarlock:hf_causal",
        "--invarlock-adapter=pytest-invarlock:hf_causal", f"--invarlock-model={fixture_dir('gpt2')}",
        "--invarlock-report=r.json")
    assert result.ret == 0
    payload = records(beside_invarlock.path / "r.json")
    assert {r["adapter"] for r in payload["records"]} == {"invarlock:hf_causal",
                                                          "pytest-invarlock:hf_causal"}
    rows = {row["label"]: row for row in payload["adapters"]}
    assert rows["invarlock:hf_causal"]["target"] == "fake_invarlock:HF_Causal_Adapter"
    assert rows["pytest-invarlock:hf_causal"]["origin"] == "builtin"
    result.stdout.fnmatch_lines(["*invarlock: adapter invarlock:hf_causal = "
                                 "fake_invarlock:HF_Causal_Adapter (invarlock 0.3.7)",
                                 "*invarlock: adapter pytest-invarlock:hf_causal = *"])


def test_an_unqualified_shared_name_is_a_usage_error_naming_both(beside_invarlock):
    result = beside_invarlock.runpytest_subprocess("conformance", "--invarlock-adapter=hf_causal")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "*--invarlock-adapter=hf_causal is ambiguous*--invarlock-adapter=invarlock:hf_causal "
        "(invarlock 0.3.7, fake_invarlock:HF_Causal_Adapter) or "
        "--invarlock-adapter=pytest-invarlock:hf_causal (pytest-invarlock *"])
    # a name only one distribution registers keeps its plain selector
    result = beside_invarlock.runpytest_subprocess(
        "conformance/test_loading.py", "--invarlock-adapter=hf_seq2seq", "--co", "-q")
    assert result.ret == 0


def test_the_listing_shows_both_registrations(beside_invarlock):
    out = subprocess.run([sys.executable, "-m", "pytest_invarlock", "adapters", "--json"],
                         capture_output=True, text=True, check=True, env={**os.environ}).stdout
    listing = json.loads(out)
    assert validate(listing, "adapter_listing") == []
    names = {a["name"]: a for a in listing["adapters"]}
    assert names["invarlock:hf_causal"]["status"] == "ready"
    assert names["pytest-invarlock:hf_causal"]["origin"] == "builtin"
    assert "hf_seq2seq" in names  # unshared names stay plain


def test_an_unrelated_run_sees_no_hub_setting_and_no_header(pytester, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    pytester.makepyfile("""
        import os

        def test_hub_setting_is_the_users():
            assert "HF_HUB_OFFLINE" not in os.environ
    """)
    result = pytester.runpytest_subprocess("-v")
    result.assert_outcomes(passed=1)
    ours = [line for line in result.stdout.lines
            if "invarlock" in line and not line.startswith("plugins:")]
    assert ours == []


@pytest.fixture
def broken(tmp_path, fixture_dir):
    def make(kind):
        path = tmp_path / kind
        shutil.copytree(fixture_dir("gpt2"), path)
        if kind == "truncated":
            weights = path / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:-1000])
        else:
            config = path / "config.json"
            lines = config.read_text().splitlines()
            lines[3] = lines[3] + ","  # "architectures": [, -> a value is missing
            config.write_text("\n".join(lines))
        return path
    return make


@pytest.mark.parametrize(("kind", "cause"), [
    ("truncated", "model.safetensors: truncated (header announces * bytes of tensor data, "
                  "file has *)"),
    ("malformed", "config.json: invalid JSON at line 4 column 21 (Expecting value)"),
])
@pytest.mark.parametrize("adapters", [[], ["--invarlock-adapter=hf_causal"]])
def test_an_unreadable_checkpoint_is_one_error_naming_the_file(suite, broken, kind, cause,
                                                               adapters):
    model = broken(kind)
    result = suite.runpytest_subprocess("conformance", f"--invarlock-model={model}", *adapters)
    result.assert_outcomes(errors=1)
    text = result.stdout.str()
    assert "Traceback" not in text and "During handling" not in text
    assert "no adapter loads it" not in text
    result.stdout.fnmatch_lines([f"*cannot load {model}: {cause}"])


def test_a_load_failure_found_at_run_time_is_reported_by_one_test(suite, fixture_dir):
    (suite.path / "refuser.py").write_text(textwrap.dedent("""
        from pytest_invarlock.adapters.roles import HFCausalAdapter

        class Refuser(HFCausalAdapter):
            def load_model(self, model_id, device="auto", **kw):
                raise RuntimeError("no GPU kernels for this model\\nsecond line")
    """))
    result = suite.runpytest_subprocess("conformance/test_describe.py",
                                        "--invarlock-adapter=refuser:Refuser",
                                        f"--invarlock-model={fixture_dir('gpt2')}")
    result.assert_outcomes(errors=1, skipped=len(describe.CHECKS) - 1)
    result.stdout.fnmatch_lines(["*refuser:Refuser on gpt2*: cannot load the model: "
                                 "load_model raised RuntimeError: no GPU kernels for this model"])
    assert "second line" not in result.stdout.str()


def test_an_adapter_named_explicitly_that_takes_no_model_is_an_error_naming_each(suite):
    (suite.path / "picky.py").write_text(textwrap.dedent("""
        from pytest_invarlock.adapters.roles import HFCausalAdapter

        class Picky(HFCausalAdapter):
            def can_handle(self, model):
                return False
    """))
    result = suite.runpytest_subprocess("conformance/test_loading.py",
                                        "--invarlock-adapter=picky:Picky", "-p", "no:randomly")
    # it inherits hf_causal's declines_config() but decides can_handle() itself: planned on
    # every model, each declined once at run time, and the run fails naming each
    assert result.ret == 1
    text = result.stdout.str()
    assert "quantized = True" not in text
    result.stdout.fnmatch_lines(["*picky:Picky on all-models: took none of the * models it was "
                                 "given: *gpt2: can_handle() returned False*"])
    for model in ("llama-gqa", "bert", "t5"):
        assert f"{model}: can_handle() returned False" in text or (
            f"{model}: load_model raised" in text)


@pytest.mark.parametrize(("selector", "says"), [
    ("os:path", "is a module, not a class"),
    ("json:dumps", "is a function, not a class"),
    ("mine:NotAnAdapter", "lacks the methods can_handle, describe, snapshot, restore"),
    ("mine:Nothing", "cannot be imported"),
])
def test_a_module_object_that_is_not_an_adapter_class_is_a_usage_error(suite, selector, says):
    (suite.path / "mine.py").write_text("class NotAnAdapter:\n    name = 'x'\n")
    result = suite.runpytest_subprocess("conformance", f"--invarlock-adapter={selector}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{selector}*{says}*"])


def test_a_subclass_inheriting_a_name_is_recorded_under_what_was_selected(suite, fixture_dir):
    (suite.path / "sub.py").write_text(textwrap.dedent("""
        from pytest_invarlock.adapters.roles import HFCausalAdapter

        class Sub(HFCausalAdapter):
            pass
    """))
    result = suite.runpytest_subprocess("conformance/test_loading.py",
                                        "--invarlock-adapter=sub:Sub", "--invarlock-report=r.json",
                                        f"--invarlock-model={fixture_dir('gpt2')}")
    assert result.ret == 0
    payload = records(suite.path / "r.json")
    assert {r["adapter"] for r in payload["records"]} == {"sub:Sub"}
    assert "hf_causal on" not in result.stdout.str()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_lane_that_cannot_run_here_writes_no_evidence(suite, tmp_path):
    result = suite.runpytest_subprocess("conformance/test_loading.py", "--invarlock-lane=cuda",
                                        "--invarlock-adapter=hf_gpt2", "--invarlock-report=r.json")
    result.assert_outcomes(skipped=1)
    payload = records(suite.path / "r.json")
    assert (payload["status"], payload["records"]) == ("not_run", [])
    assert "CUDA device" in payload["reason"]
    assert payload["provenance"]["device"] == {"type": "cpu", "name": None}
    result.stdout.fnmatch_lines(["*hf_gpt2: not judged: no check ran*"])


def test_a_misspelt_manifest_entry_is_an_error_with_a_suggestion(suite):
    manifest = {"format_version": "invarlock-expected-failures-v1", "expected_failures": [
        {"adapter": "hf_casual", "check": "check_describe_heds", "reason": "typo"}]}
    (suite.path / "xfail.json").write_text(json.dumps(manifest))
    result = suite.runpytest_subprocess("conformance", "--invarlock-xfail=xfail.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "*xfail.json: entry 0: unknown check 'check_describe_heds' (did you mean "
        "'check_describe_heads'*); entry 0: unknown adapter 'hf_casual' (did you mean "
        "'hf_causal'*"])


@pytest.mark.parametrize("workers", [[], ["-p", "xdist", "-n", "2"]])
def test_declined_models_are_listed_in_the_summary_and_the_results(suite, workers):
    result = suite.runpytest_subprocess("conformance/test_loading.py",
                                        "--invarlock-adapter=hf_seq2seq",
                                        "--invarlock-report=r.json", *workers)
    assert result.ret == 0
    payload = records(suite.path / "r.json")
    declined = {d["model"]: d for d in payload["adapters"][0]["declined"]}
    taken = {r["model"] for r in payload["records"]}
    assert "gpt2" in declined and "bert" in declined and "t5" in taken
    assert not set(declined) & taken
    assert declined["gpt2"]["reason"].startswith(("can_handle() ", "load_model "))
    result.stdout.fnmatch_lines([f"*invarlock: hf_seq2seq declined {len(declined)} models:*"])
    assert len(payload["records"]) == len(taken) * len(loading.CHECKS)


def test_a_run_leaves_no_temporary_directory(suite, fixture_dir, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    result = suite.runpytest_subprocess("conformance/test_chunked.py",
                                        "--invarlock-adapter=hf_causal",
                                        f"--invarlock-model={fixture_dir('gpt2')}")
    assert result.ret == 0
    assert [p.name for p in scratch.iterdir() if "invarlock" in p.name] == []


def test_progress_names_the_adapter_and_model(suite, fixture_dir):
    result = suite.runpytest_subprocess("conformance/test_describe.py",
                                        "conformance/test_loading.py",
                                        "--invarlock-adapter=hf_causal",
                                        f"--invarlock-model={fixture_dir('gpt2')}",
                                        f"--invarlock-model={fixture_dir('llama-gqa')}")
    assert result.ret == 0
    progress = [line for line in result.stdout.lines if line.startswith("hf_causal on ")]
    assert [line.split()[2] for line in progress] == [fixture_dir("gpt2").name,
                                                      fixture_dir("llama-gqa").name]
    assert not any(line.startswith("conformance/test_") for line in result.stdout.lines)


def test_a_manifest_entry_never_excuses_a_load_error(suite, broken):
    model = broken("truncated")
    manifest = {"format_version": "invarlock-expected-failures-v1", "expected_failures": [
        {"adapter": "hf_causal", "check": c.__name__, "reason": "known"}
        for c in describe.CHECKS]}
    (suite.path / "xfail.json").write_text(json.dumps(manifest))
    result = suite.runpytest_subprocess("conformance/test_describe.py", "--invarlock-xfail=xfail.json",
                                        "--invarlock-adapter=hf_causal", f"--invarlock-model={model}")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*model.safetensors: truncated*"])
    assert "hardened" not in result.stdout.str()


def test_two_models_in_folders_of_one_name_are_told_apart(suite, broken, tmp_path, fixture_dir):
    bad = broken("truncated")
    good = tmp_path / "other" / "truncated"
    shutil.copytree(fixture_dir("gpt2"), good)
    result = suite.runpytest_subprocess("conformance/test_describe.py",
                                        "--invarlock-adapter=hf_gpt2", f"--invarlock-model={good}",
                                        f"--invarlock-model={bad}", "--invarlock-report=r.json")
    result.assert_outcomes(errors=1, passed=len(describe.CHECKS) - 3, skipped=3)
    assert {r["model"] for r in records(suite.path / "r.json")["records"]} == {
        "other-truncated", f"{bad.parent.name}-truncated"}


def test_an_adapter_that_takes_no_model_is_listed_with_its_declines(suite, tmp_path):
    result = suite.runpytest_subprocess("conformance/test_describe.py", "--invarlock-report=r.json",
                                        f"--invarlock-model={CONFORMANCE.parent / 'fixtures'}")
    rows = {row["label"]: row for row in records(suite.path / "r.json")["adapters"]}
    assert rows and all(row["declined"] for row in rows.values()), rows
    result.stdout.fnmatch_lines(["*invarlock: hf_seq2seq declined 1 model:*"])
