"""Sessions: one per lane, the support-matrix merge, the project's tests, lint and benchmarks.

Run ``nox -l`` to list them. Logic lives in the package; sessions only install and call it.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lane-cpu", "support_matrix", "tests"]
nox.options.reuse_existing_virtualenvs = True

CPU_PIN = ("-c", "constraints/cpu.txt")
RESULTS = Path("results")
MATRIX = Path("contracts/support_matrix.json")

#: lane id -> (pip arguments that pin torch, extras to install). CPU lanes pin the CPU torch
#: build; CUDA lanes leave torch to the runner's CUDA wheels.
LANES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cpu": (CPU_PIN, ()),
    "cuda": ((), ()),
    "cpu-quant": (CPU_PIN, ()),
    "cuda-quant": ((), ()),
}


def _lane(lane: str) -> None:
    pins, extras = LANES[lane]

    @nox.session(name=f"lane-{lane}")
    def session_fn(session: nox.Session) -> None:
        session.install(*pins, "-e", f".[{','.join(('dev', *extras))}]")
        RESULTS.mkdir(exist_ok=True)
        session.run("pytest", "conformance/", f"--invarlock-lane={lane}",
                    f"--invarlock-report={RESULTS / f'{lane}.json'}", *session.posargs)

    session_fn.__doc__ = (f"Run the conformance suite in lane {lane!r} and write "
                          f"results/{lane}.json (the evidence the support matrix is built from).")


for _lane_id in LANES:
    _lane(_lane_id)


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
    runner has two cores (``nox -s tests -- -n 0`` runs them in one process).
    """
    session.install(*CPU_PIN, "-e", ".[dev]")
    session.run("pytest", "-n", "2", *session.posargs, env={"HF_HUB_OFFLINE": "1"})


@nox.session
def lint(session: nox.Session) -> None:
    """Run ruff over the package, the conformance modules, the tests and this file."""
    session.install("ruff")
    session.run("ruff", "check", ".")


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
