"""The profile seam holds a non-HF protocol: the toy profile of tests/toy_profile.py, end to end.

Everything the toy needs comes from outside the package: a fake installed distribution
registers the profile under ``invarlock.profiles`` and its implementations under the toy's own
group, and a conformance module marks its test with the toy's checks. No file of
``pytest_invarlock`` is touched or named after it.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import toy_profile as toy

from pytest_invarlock.resources import validate

HERE = Path(__file__).parent
CORE = HERE.parent / "pytest_invarlock"
DIST = "toy-profile"

CONFORMANCE = textwrap.dedent("""
    import pytest

    import toy_profile as toy
    from pytest_invarlock.testing import run_check

    pytestmark = pytest.mark.invarlock(toy.CHECKS)


    def test_toy(invarlock_subject, invarlock_check):
        run_check(invarlock_subject, invarlock_check)
""")

ENTRY_POINTS = textwrap.dedent(f"""
    [invarlock.profiles]
    {toy.NAME} = toy_profile:PROFILE

    [{toy.GROUP}]
    toy_seeded = toy_profile:SeededFactory
    toy_unseeded = toy_profile:UnseededFactory
""").lstrip()

N_CASES = 2 * len(toy.LABELS)  # two implementations, every label
N_TESTS = N_CASES * len(toy.CHECKS)


@pytest.fixture(scope="session")
def _built_fixtures():
    """Override the suite's HF fixture build: this module loads no HF model in-process."""


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    """A run dir with the conformance module, and a site dir holding only the fake dist."""
    root = tmp_path_factory.mktemp("toy")
    info = root / "site" / "toy_profile-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    shutil.copy(HERE / "toy_profile.py", root / "site" / "toy_profile.py")
    (root / "run").mkdir()
    (root / "run" / "test_toy_conformance.py").write_text(CONFORMANCE)
    return root


def run(root, *args, module="pytest"):
    """Run ``python -m module args`` in the run dir, the fake dist alone on PYTHONPATH.

    What ``pytester.runpytest_subprocess`` does, in a module-scoped dir: one serial run serves
    every test here, which keeps the module fast (each process imports torch).
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env.update(PYTHONPATH=str(root / "site"), PY_COLORS="0")
    extra = ("-p", "no:cacheprovider") if module == "pytest" else ()
    done = subprocess.run([sys.executable, "-m", module, *extra, *args], cwd=root / "run",
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    return pytest.RunResult(done.returncode, done.stdout.splitlines(), done.stderr.splitlines(),
                            0.0)


@pytest.fixture(scope="module")
def serial(toy_dir):
    """The toy conformance run in one process, writing r.json."""
    return run(toy_dir, "--invarlock-report=r.json")


def payload_of(path):
    payload = json.loads(Path(path).read_text())
    assert validate(payload, "lane_results") == []
    return payload


def comparable(payload):
    """Return what two runs of the same lane must agree on (records in a fixed order)."""
    records = sorted(payload["records"], key=lambda r: (r["adapter"], r["model"], r["check"]))
    return records, payload["adapters"], payload["provenance"]["packages"]


def test_the_core_knows_nothing_of_the_toy():
    from pytest_invarlock.profile import profiles

    named = [p.relative_to(CORE) for p in CORE.rglob("*") if p.is_file()
             and p.suffix in (".py", ".json", ".txt", ".toml")
             and ("toy_module" in (text := p.read_text(errors="replace")) or "toy_profile" in text)]
    assert named == []
    assert toy.NAME not in {p.name for p in profiles()}  # registered only by the fake dist


def test_toy_profile_runs_end_to_end(serial, toy_dir):
    serial.assert_outcomes(passed=N_TESTS - len(toy.LABELS), failed=len(toy.LABELS))
    serial.stdout.fnmatch_lines([
        "invarlock: lane cpu *",
        f"invarlock: adapter toy_seeded = toy_profile:SeededFactory ({DIST} 1.0)",
        f"invarlock: adapter toy_unseeded = toy_profile:UnseededFactory ({DIST} 1.0)"])
    serial.stdout.fnmatch_lines([
        "invarlock: toy_seeded: conformant, hardened",
        "invarlock: toy_unseeded: not conformant",
        "FAILED toy_unseeded on mlp-4: check_build_is_seeded: build('mlp-4') is not "
        "reproducible: 0.weight, 0.bias, 2.weight, 2.bias differ between two builds; draw the "
        "initial parameters from torch.Generator().manual_seed(seed(label)), not the global RNG",
        "  Reproduce: pytest 'test_toy_conformance.py::test_toy[[]toy_unseeded-mlp-4-"
        "check_build_is_seeded[]]' --invarlock-lane=cpu"])
    assert "hf_causal" not in serial.stdout.str()  # the HF profile planned nothing here

    payload = payload_of(toy_dir / "run" / "r.json")
    assert payload["status"] == "ran"
    assert set(payload["provenance"]["packages"]) == {"pytest-invarlock", "pytest",
                                                      "pytest-xdist", "torch"}
    assert [(row["label"], row["origin"], row["distribution"], row["profile"])
            for row in payload["adapters"]] == [
        ("toy_seeded", "third_party", DIST, toy.NAME), ("toy_unseeded", "third_party", DIST,
                                                         toy.NAME)]
    records = payload["records"]
    assert len(records) == N_TESTS
    for r in records:
        assert r["profile"] == toy.NAME
        assert r["lane_id"] == f"{r['model']}-toy-cpu-{r['adapter']}"
        assert r["labels"] == {"family": "mlp", "role": "toy", "width": r["model"][4:]}
        assert (r["family"], r["role"], r["source"], r["digest"]) == ("mlp", "toy", None, None)
    failed = sorted((r["adapter"], r["model"], r["check"], r["level"], r["outcome"])
                    for r in records if r["outcome"] != "passed")
    assert failed == [("toy_unseeded", label, "check_build_is_seeded", "MUST", "failed")
                      for label in toy.LABELS]
    # the mutating check runs first, so the seeded check passing proves put_back undid it
    assert {r["outcome"] for r in records if r["adapter"] == "toy_seeded"} == {"passed"}


def test_toy_results_build_the_support_matrix(serial, toy_dir):
    done = run(toy_dir, "r.json", "--output", "m.json", "--docs", "d",
               module="pytest_invarlock.matrix")
    assert done.ret == 0, done.stderr.str()
    matrix = json.loads((toy_dir / "run" / "m.json").read_text())
    lanes = {lane["lane_id"]: lane for lane in matrix["lanes"]}
    assert sorted(lanes) == sorted(f"{label}-toy-cpu-{adapter}" for label in toy.LABELS
                                   for adapter in ("toy_seeded", "toy_unseeded"))
    for label in toy.LABELS:
        good, bad = lanes[f"{label}-toy-cpu-toy_seeded"], lanes[f"{label}-toy-cpu-toy_unseeded"]
        assert (good["family"], good["role"], good["runtime"]) == ("mlp", "toy", "cpu")
        assert (good["support_tier"], good["conformance"]) == ("supported_experimental",
                                                               "hardened")
        assert good["evidence"]["real_checkpoint"] is False  # a built module is no checkpoint
        assert (bad["support_tier"], bad["evidence_status"]) == ("community_experimental",
                                                                 "failing")
        assert bad["evidence"]["failing_checks"] == ["check_build_is_seeded"]
    docs = toy_dir / "run" / "d"
    assert "mlp-4-toy-cpu-toy_seeded" in (docs / "support-matrix.md").read_text()
    assert (docs / "support-matrix.html").is_file()


def test_toy_profile_under_xdist_loadgroup_gives_the_same_records(serial, toy_dir):
    # selected explicitly, by plain and by DIST:NAME selectors: routed to the toy profile
    result = run(toy_dir, "-n", "2", "--dist", "loadgroup", "--invarlock-report=x.json",
                 "--invarlock-adapter=toy_unseeded", f"--invarlock-adapter={DIST}:toy_seeded")
    result.assert_outcomes(passed=N_TESTS - len(toy.LABELS), failed=len(toy.LABELS))
    assert comparable(payload_of(toy_dir / "run" / "x.json")) == comparable(
        payload_of(toy_dir / "run" / "r.json"))


def test_a_lane_outside_the_profiles_lanes_is_not_run(toy_dir):
    # a module:Class selector is routed to the profile whose protocol the class implements
    result = run(toy_dir, "--invarlock-adapter=toy_profile:SeededFactory",
                 "--invarlock-lane=cpu-quant", "--invarlock-report=q.json")
    result.assert_outcomes(skipped=1)  # said once
    payload = payload_of(toy_dir / "run" / "q.json")
    assert (payload["status"], payload["records"]) == ("not_run", [])  # never evidence


HF_TEST = """
import pytest

from pytest_invarlock.hf_adapter.checks import tying
from pytest_invarlock.testing import run_check

pytestmark = pytest.mark.invarlock(tying.CHECKS)


def test_hf(invarlock_subject, invarlock_check):
    run_check(invarlock_subject, invarlock_check)
"""


def test_a_profile_none_of_whose_implementations_is_selected_says_so(toy_dir):
    mixed = toy_dir / "mixed"
    mixed.mkdir(exist_ok=True)
    (mixed / "test_hf.py").write_text(HF_TEST)
    result = run(toy_dir, str(mixed / "test_hf.py"), "test_toy_conformance.py", "-rs",
                 "--invarlock-adapter=toy_profile:SeededFactory")
    result.stdout.fnmatch_lines(["*no hf_adapter implementation was selected (--invarlock-adapter "
                                 "named toy_profile:SeededFactory, of other profiles)*"])
    assert result.ret == 0, "\n".join(result.outlines[-30:])
