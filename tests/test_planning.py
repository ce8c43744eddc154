"""Planning loads nothing: cases come from config files, declarations and the fixture catalog."""

import json
import shutil
import sys
import textwrap

import pytest

from pytest_invarlock.hf_adapter.fixtures import catalog, fixture_path, package_path, packages
from pytest_invarlock.hf_adapter.planning import size
from pytest_invarlock.registry import discover

COUNTING = """
    import os

    from pytest_invarlock.adapters import auto, base


    def _counted(load):
        def load_model(self, *args, **kwargs):
            with open(os.environ["LOADS_FILE"], "a") as out:
                out.write(f"LINE\\n")
            return load(self, *args, **kwargs)
        return load_model


    base.HFAdapterBase.load_model = _counted(base.HFAdapterBase.load_model)
    auto.HFAutoAdapter.load_model = _counted(auto.HFAutoAdapter.load_model)
"""


def _bundled():
    paths = {name: str(fixture_path(name)) for name in catalog()}
    for p in packages().values():
        if package_path(p):
            paths[p.name] = str(package_path(p))
    return paths


@pytest.mark.parametrize("label", sorted(discover().adapters))
def test_declared_declines_match_what_loading_finds(label):
    """A reference adapter's declines_config() plans exactly the models load_model + can_handle take."""
    import transformers

    adapter = discover().adapters[label].instantiate()
    missing = getattr(type(adapter), "unavailable", lambda: None)()
    if missing:
        pytest.skip(missing)
    wrong = []
    for model, path in sorted(_bundled().items()):
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        declared = type(adapter).declines_config(config)
        try:
            takes = adapter.can_handle(adapter.load_model(path, device="cpu")) is True
        except Exception:
            takes = False
        if takes != (declared is None):
            wrong.append(f"{model}: declines_config says {declared!r}, loading says {takes}")
    assert not wrong, wrong


def _counting(pytester, monkeypatch, line):
    """Install a plugin counting every reference adapter's load_model calls into loads.txt."""
    pytester.makepyfile(counting=textwrap.dedent(COUNTING).replace("LINE", line))
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    loads = pytester.path / "loads.txt"
    monkeypatch.setenv("LOADS_FILE", str(loads))
    return loads


def test_collect_only_loads_no_model(pytester, monkeypatch, suite_dir):
    """`pytest conformance --collect-only --invarlock-lane=cpu` makes no load_model call."""
    loads = _counting(pytester, monkeypatch, "{type(self).__name__}")
    result = pytester.runpytest_subprocess(str(suite_dir), "--collect-only", "-q", "-p",
                                           "counting", "--invarlock-lane=cpu", "-p",
                                           "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()[-2000:]
    collected = [line for line in result.outlines if "::" in line]
    assert len(collected) > 1000
    assert not loads.exists()
    # the counter counts: running one case loads its model once
    result = pytester.runpytest_subprocess(str(suite_dir / "test_tying.py"), "-p", "counting",
                                           "--invarlock-adapter=hf_gpt2", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()[-2000:]
    assert loads.read_text().split() == ["HFGPT2Adapter"]


def test_each_pair_loads_once_and_only_on_its_worker(pytester, monkeypatch, suite_dir):
    """Under -n 2 --dist loadgroup every (adapter, model) loads on one worker, once."""
    loads = _counting(pytester, monkeypatch,
                      "{os.environ.get('PYTEST_XDIST_WORKER')} {type(self).__name__} {args[0]}")
    result = pytester.runpytest_subprocess(
        str(suite_dir), "-p", "counting", "-n", "2", "--dist", "loadgroup",
        "--invarlock-adapter=hf_llama",
        "-p", "no:cacheprovider", "-q")
    assert result.ret == 0, result.stdout.str()[-2000:]
    workers: dict[str, set[str]] = {}
    for line in loads.read_text().splitlines():  # the checks' own fresh loads included
        worker, _, model = line.split(" ", 2)
        workers.setdefault(model, set()).add(worker)
    from pytest_invarlock.hf_adapter.quant_fixtures import quantized_catalog

    quantized = tuple(f"/{name}-" for name in quantized_catalog())  # a check's own probe loads
    fixtures = {m for m in workers if "/fixtures/" in m and not any(q in m for q in quantized)}
    assert len(fixtures) == 6  # llama-gqa(-tied, -kv2), mistral, qwen2-tied, qwen3
    assert all(len(workers[m]) == 1 for m in fixtures), workers
    assert set().union(*workers.values()) == {"gw0", "gw1"}
    # the costliest cases (the largest checkpoints) start first, one on each worker
    first = {}
    for line in loads.read_text().splitlines():
        worker, _, model = line.split(" ", 2)
        first.setdefault(worker, model)
    largest = sorted(fixtures, key=lambda m: -size(m))[:2]
    assert sorted(first.values()) == sorted(largest), (first, largest)


OBSERVING = """
    import os
    import sys

    from pytest_invarlock.hf_adapter import profile

    WHO = ["controller"]  # not PYTEST_XDIST_WORKER: an outer xdist run sets it for us too

    def pytest_configure(config):
        if hasattr(config, "workerinput"):
            WHO[0] = config.workerinput["workerid"]

    def _log(line):
        with open(os.environ["OBSERVED_FILE"], "a") as out:
            out.write(f"{WHO[0]} {line}\\n")

    _plan = profile.HFAdapterProfile.plan

    def _counted_plan(self, request):
        _log("plan")
        return _plan(self, request)

    profile.HFAdapterProfile.plan = _counted_plan

    def pytest_runtest_call(item):
        _log(f"threads {sys.modules['torch'].get_num_threads()} {item.nodeid}")

    def pytest_unconfigure(config):
        _log(f"torch {'torch' in sys.modules}")
"""


def test_an_xdist_run_shares_the_cores_and_its_controller_plans_nothing(pytester, monkeypatch,
                                                                        suite_dir):
    """Workers plan, run checks on their share of the cores; the controller imports no torch.

    The controller takes the plan rows and the check order from its workers (planning again
    after the run, or importing the checks for their order, cost it seconds of a 2-core
    machine); a test that is not a conformance test keeps torch's own thread count.
    """
    from pytest_invarlock.cores import cores

    pytester.makepyfile(observing=textwrap.dedent(OBSERVING))
    pytester.makepyfile(test_plain="def test_plain():\n    import torch  # noqa: F401\n")
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    observed = pytester.path / "observed.txt"
    monkeypatch.setenv("OBSERVED_FILE", str(observed))
    args = [str(suite_dir / "test_tying.py"), "--invarlock-adapter=hf_gpt2", "-p", "observing",
            "-p", "no:cacheprovider", "-q"]
    one = pytester.runpytest_subprocess(*args, "--invarlock-report=one.json")
    assert one.ret == 0, one.stdout.str()[-2000:]
    observed.unlink()
    two = pytester.runpytest_subprocess(*args, "test_plain.py", "-n", "2", "--dist", "loadgroup",
                                        "--invarlock-report=two.json")
    assert two.ret == 0, two.stdout.str()[-2000:]
    lines = observed.read_text().splitlines()
    assert "controller torch False" in lines
    assert not [line for line in lines if line.startswith("controller plan")]
    assert {line.split()[0] for line in lines if " plan" in line} <= {"gw0", "gw1"}
    threads = {line.split()[3]: int(line.split()[2]) for line in lines if " threads " in line}
    share = min(max(1, cores() // 2), torch_threads())  # limited, never raised
    assert {n for t, n in threads.items() if "check_" in t} == {share}
    (plain,) = [n for t, n in threads.items() if t.endswith("::test_plain")]
    assert plain == torch_threads()
    one_payload = json.loads((pytester.path / "one.json").read_text())
    two_payload = json.loads((pytester.path / "two.json").read_text())
    assert one_payload["adapters"] == two_payload["adapters"]
    # the summary's matrix lists the checks in the same (suite) order
    assert _matrix(one.outlines) == _matrix(two.outlines)


def torch_threads():
    import subprocess

    code = "import torch; print(torch.get_num_threads())"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout)


def _matrix(lines):
    start = next(i for i, line in enumerate(lines) if line.startswith("check "))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("total:"))
    return lines[start:end + 1]


def test_a_bundled_fixture_passed_by_path_never_earns_published_basis(pytester, tmp_path,
                                                                       suite_dir):
    from pytest_invarlock import matrix

    copy = tmp_path / "elsewhere" / "my-gpt2"
    shutil.copytree(fixture_path("gpt2"), copy)
    reports = []
    for i, model in enumerate([str(fixture_path("gpt2")), str(copy)]):
        report = pytester.path / f"r{i}.json"
        result = pytester.runpytest_subprocess(
            str(suite_dir), f"--invarlock-model={model}", "--invarlock-adapter=hf_gpt2",
            f"--invarlock-report={report}", "-p", "no:cacheprovider", "-q")
        assert result.ret == 0, result.stdout.str()[-2000:]
        reports.append((f"r{i}.json", json.loads(report.read_text())))
    for (_, payload), label in zip(reports, [fixture_path("gpt2").name, "my-gpt2"], strict=True):
        assert {(r["model"], r["source"], r["family"], r["role"], r["lane_id"])
                for r in payload["records"]} == {
            (label, "fixture", "gpt2", "causal", "gpt2-causal-hf-cpu-hf_gpt2")}
    (lane,) = matrix.build(reports)["lanes"]
    assert (lane["support_tier"], lane["evidence"]["real_checkpoint"]) == (
        "supported_experimental", False)


@pytest.fixture
def suite_dir():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "conformance"


def test_the_plugin_module_imports_neither_torch_nor_transformers():
    import subprocess

    code = ("import sys, pytest_invarlock.plugin, pytest_invarlock.profile, "
            "pytest_invarlock.hf_adapter, pytest_invarlock.matrix; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_named_model_no_adapter_can_load_fails_the_run(pytester, tmp_path, suite_dir):
    """Declines decided at run time still make an unusable --invarlock-model an error."""
    broken = tmp_path / "wide-gpt2"
    shutil.copytree(fixture_path("gpt2"), broken)
    config = json.loads((broken / "config.json").read_text())
    config["n_embd"] *= 2  # the weights no longer fit: every adapter's load_model raises
    (broken / "config.json").write_text(json.dumps(config))
    result = pytester.runpytest_subprocess(str(suite_dir / "test_tying.py"),
                                           f"--invarlock-model={broken}", "-p", "no:cacheprovider")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*--invarlock-model wide-gpt2: no adapter took it (hf_auto: *"])
