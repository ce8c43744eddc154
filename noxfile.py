"""Sessions: one per lane, the support-matrix merge, the project's tests, lint and benchmarks.

Run ``nox -l`` to list them. Logic lives in the package; sessions only install and call it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import nox

if TYPE_CHECKING:  # for the type checker only: nox itself runs without the package installed
    from pytest_invarlock.lanes import Lane

nox.options.sessions = ["lane-cpu", "support_matrix", "tests"]
nox.options.reuse_existing_virtualenvs = True

CPU_PIN = ("-c", "constraints/cpu.txt")
RESULTS = Path("results")
MATRIX = Path("contracts/support_matrix.json")
LANES_FILE = Path(__file__).parent / "pytest_invarlock" / "lanes.py"

#: device -> pip arguments that pin torch for it; the only lane fact that is nox's own (the lanes
#: themselves come from lanes.py). A CPU lane installs under constraints/cpu.txt, so every CPU run
#: verifies against the same torch; a CUDA lane leaves torch to the runner, whose CUDA wheels must
#: match its driver.
TORCH_PINS: dict[str, tuple[str, ...]] = {"cpu": CPU_PIN, "cuda": ()}
#: a lane's environment: offline, and one string-hash seed, so that a results file is the same
#: run to run even where the code under test iterates sets (TransformerLens 4.3's bridge state
#: dict of BART-like encoder-decoders depends on the hash seed)
LANE_ENV = {"HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}


def _load_lanes() -> ModuleType:
    """Load pytest_invarlock/lanes.py by path: the lane table's one source.

    nox runs before (and without) the package being installed, and importing the package would
    import its dependencies; lanes.py imports only the standard library at module level.
    """
    spec = importlib.util.spec_from_file_location("_invarlock_lanes", LANES_FILE)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load the lane table from {LANES_FILE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the defining module up by name
    spec.loader.exec_module(module)
    return module


lanes = _load_lanes()


def _lane(lane: Lane) -> None:
    """Define the ``lane-<id>`` session for one row of the lane table."""
    pins = TORCH_PINS[lane.device]
    requirements = [requirement for _module, requirement in lane.requires]

    @nox.session(name=f"lane-{lane.id}")
    def session_fn(session: nox.Session) -> None:
        session.install(*pins, "-e", f".[{','.join(('dev', *lane.extras))}]", *requirements)
        RESULTS.mkdir(exist_ok=True)
        workers = ("-n", str(lane.workers), "--dist", "loadgroup") if lane.workers else ()
        session.run("pytest", "conformance/", f"--invarlock-lane={lane.id}",
                    f"--invarlock-report={RESULTS / f'{lane.id}.json'}", *workers,
                    *session.posargs, env=LANE_ENV)

    torch = "the CPU torch build" if pins else "the runner's CUDA torch"
    session_fn.__doc__ = (
        f"Run the conformance suite in lane {lane.id!r} ({lane.description}) with {torch}, "
        f"writing results/{lane.id}.json.\n\n"
        "The results file is the evidence the support matrix is built from, so each lane runs in "
        "its own session (and on its own runner in CI): a lane's verdicts are only worth what its "
        "device and torch build really were.")


for _lane_row in lanes.LANES.values():
    _lane(_lane_row)


@nox.session
def support_matrix(session: nox.Session) -> None:
    """Merge results/*.json into contracts/support_matrix.json and docs/; ``-- --check`` gates.

    The matrix is a pure function of the lane results, so it needs no torch: the package is
    installed without dependencies to keep this session fast on a release runner.
    """
    files = sorted(str(p) for p in RESULTS.glob("*.json"))
    if not files:
        session.error("no results/*.json: run a lane first (e.g. `nox -s lane-cpu`)")
    session.install("jsonschema")
    session.install("--no-deps", "-e", ".")
    session.run("python", "-m", "pytest_invarlock.matrix", *files, "--output", str(MATRIX),
                "--docs", "docs", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the project's own tests (pytester, broken adapters, snapshot format) on the CPU.

    Two xdist workers by default: most tests run a conformance suite in a subprocess, and a CI
    runner has two cores (``nox -s tests -- -n 0`` runs them in one process). transformer-lens
    is installed (the ``tl`` extra) for the TransformerLens profile's subset: llama passing
    every check, one broken adapter per check, a lane run on two architectures; the profile
    over every architecture is ``nox -s lane-tl-cpu`` (minutes, its own session).
    """
    session.install(*CPU_PIN, "-e", ".[dev,tl]")
    session.run("pytest", "-n", "2", *session.posargs, env={"HF_HUB_OFFLINE": "1"})


@nox.session(name="tests-quant")
def tests_quant(session: nox.Session) -> None:
    """Run the tests of the quantized backends: torchao, optimum-quanto, bitsandbytes, ct, hqq.

    The default ``tests`` session installs no backend, so these tests skip there (saying which
    backend is missing); here they run for real on the CPU: the suite's deep view of state
    (leaves), the quantized reference adapters, and broken quantized adapters failing exactly
    the check they break. Kept out of ``tests``: the backends add minutes of installing.
    """
    session.install(*CPU_PIN, "-e", ".[dev,torchao,quanto,bnb,ct,hqq]")
    session.run("pytest", "tests/test_leaves.py", "tests/test_quantized_adapters.py",
                "tests/test_ct_adapter.py", "tests/test_quant_fixtures.py",
                "tests/test_hqq_adapter.py", *session.posargs, env={"HF_HUB_OFFLINE": "1"})


@nox.session(name="tests-gptq")
def tests_gptq(session: nox.Session) -> None:
    """Run the GPTQ/AWQ adapter tests with gptqmodel (and optimum) installed.

    Its own session: gptqmodel 7.6.0 builds from an sdist (about 100 s) and pins
    numpy==2.2.6 (on Python < 3.14). The tests build tiny GPTQ/AWQ checkpoints from the
    fixtures on the CPU (cached beside them) and skip in ``tests``.
    """
    session.install(*CPU_PIN, "-e", ".[dev,gptq,awq]")
    session.run("pytest", "tests/test_gptq_adapter.py", *session.posargs,
                env={"HF_HUB_OFFLINE": "1"})


@nox.session
def lint(session: nox.Session) -> None:
    """Run ruff over the whole tree and mypy over what pyproject.toml's ``[tool.mypy]`` names.

    ruff catches style and likely bugs in every file (package, conformance modules, tests, this
    file); mypy checks the package's types against those of torch, transformers and pytest, so
    the package is installed with its dev extras (CPU torch pin) for the imports to resolve.
    mypy runs without arguments so that what it checks, and how strictly, is stated once, in
    ``[tool.mypy]``, for ``nox -s lint`` and a bare ``mypy`` alike.
    """
    session.install(*CPU_PIN, "-e", ".[dev]", "mypy")
    session.run("ruff", "check", ".")
    session.run("mypy")


@nox.session
def benchmark(session: nox.Session) -> None:
    """Time snapshot/restore (bytes, chunked) against safetensors and InvarLock on a llama.

    The model is a ~250M-parameter llama built from a config (no hub access). InvarLock 0.12.1
    is installed too, so that its own bytes and chunked snapshot/restore paths are timed in the
    same run as ours: the figures are only comparable when they come from one process on one
    machine. Its install is optional: InvarLock declares Python >= 3.12 but its snapshot paths
    run on 3.11, hence ``--ignore-requires-python``; the CPU torch pin keeps pip from pulling a
    CUDA build; when the install fails (offline, no wheel) the benchmark runs without its rows,
    and ``nox -s benchmark -- --no-invarlock`` leaves them out. It goes into this session's own
    virtualenv only, never the test one: the tests count the registered adapters, and its
    ``invarlock.adapters`` names would make ours qualified (``pytest-invarlock:hf_causal``).

    Timings are measured here and never asserted in tests: a 2-core CI runner is too noisy
    for thresholds, and the figures belong in release notes, not in pass/fail.
    """
    session.install(*CPU_PIN, "-e", ".")
    try:
        session.install(*CPU_PIN, "--ignore-requires-python", "invarlock[hf]==0.12.1")
    except nox.command.CommandFailed:
        session.warn("InvarLock could not be installed: benchmarking without its rows")
    session.run("python", "-m", "pytest_invarlock.hf_adapter.bench", *session.posargs)


@nox.session
def checks_doc(session: nox.Session) -> None:
    """Regenerate docs/checks.md from the check library: each check, its level, why.

    The file is generated so it cannot drift from the code; the tests fail while it is stale.
    """
    session.install(*CPU_PIN, "-e", ".")
    session.run("python", "-m", "pytest_invarlock.hf_adapter.checks_doc", "docs/checks.md")
