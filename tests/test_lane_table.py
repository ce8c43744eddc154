"""The lane table has one source, ``pytest_invarlock/lanes.py``; every copy of it must agree.

noxfile.py generates its ``lane-*`` sessions from lanes.py; tox.ini, the example workflow, the
README and the ``--invarlock-lane`` help repeat the lane list for their own readers. Each test
names the file and the lane that disagree, so a lane added to (or dropped from) lanes.py fails
here until every copy follows. Parsing and listing only: no installs, no network.
"""

from __future__ import annotations

import configparser
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_invarlock.lanes import AUTO, LANES, Lane

ROOT = Path(__file__).resolve().parent.parent
TOX = ROOT / "tox.ini"
WORKFLOW = ROOT / ".github" / "workflows" / "conformance.yml"
README = ROOT / "README.md"
NOXFILE = ROOT / "noxfile.py"
LANE_IDS = sorted(LANES)
CPU_PIN = "constraints/cpu.txt"


def _session(lane_id: str) -> str:
    return f"lane-{lane_id}"


def _mentions(text: str, word: str) -> bool:
    """Whether ``word`` occurs in ``text`` as a whole lane id (``cpu`` is not in ``cpu-quant``)."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def _disagreement(where: str, found: set[str], expected: set[str]) -> str:
    """Name, for ``where``, each lane of lanes.py it lacks and each lane it has that lanes.py lacks."""
    parts = [f"lacks lane {lane}" for lane in sorted(expected - found)]
    parts += [f"has lane {lane}, which pytest_invarlock/lanes.py lacks" for lane in sorted(found - expected)]
    return f"{where} disagrees with pytest_invarlock/lanes.py: {'; '.join(parts)}"


# -- tox.ini -------------------------------------------------------------------------------------

@functools.cache
def _tox() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)  # {posargs}, {toxinidir} stay literal
    parser.read(TOX, encoding="utf-8")
    return parser


def _tox_lanes() -> set[str]:
    prefix = "testenv:lane-"
    return {section[len(prefix):] for section in _tox().sections() if section.startswith(prefix)}


def test_tox_has_one_testenv_per_lane():
    assert _tox_lanes() == set(LANES), _disagreement("tox.ini [testenv:lane-*]", _tox_lanes(), set(LANES))


@pytest.mark.parametrize("lane", LANE_IDS)
def test_tox_testenv_runs_its_lane(lane: str):
    section = f"testenv:{_session(lane)}"
    if not _tox().has_section(section):
        pytest.fail(f"tox.ini: lane {lane} has no [{section}]")
    commands = _tox().get(section, "commands", fallback="")
    for arg in (f"--invarlock-lane={lane}", f"--invarlock-report=results/{lane}.json"):
        assert arg in commands.split(), f"tox.ini: [{section}] commands lack {arg}: {commands!r}"


@pytest.mark.parametrize("lane", LANE_IDS)
def test_tox_pins_cpu_torch_only_for_cpu_lanes(lane: str):
    """The CPU pin is inherited from [testenv]; a CUDA lane overrides setenv without it."""
    section = f"testenv:{_session(lane)}"
    if not _tox().has_section(section):
        pytest.fail(f"tox.ini: lane {lane} has no [{section}]")
    setenv = _tox().get(section, "setenv", fallback=_tox().get("testenv", "setenv", fallback=""))
    pinned = CPU_PIN in setenv
    device = LANES[lane].device
    assert pinned == (device == "cpu"), (
        f"tox.ini: [{section}] (device {device}) {'pins' if pinned else 'does not pin'} {CPU_PIN}; "
        f"a lane pins the CPU torch iff its device is cpu")


# -- the example workflow ------------------------------------------------------------------------

def _workflow_lanes() -> list[dict[str, object]]:
    """Every matrix entry of the workflow that names a lane."""
    yaml = pytest.importorskip("yaml")  # PyYAML: a dependency of transformers
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    entries = [entry for job in workflow["jobs"].values()
               for entry in job.get("strategy", {}).get("matrix", {}).get("include", [])
               if isinstance(entry, dict) and "lane" in entry]
    assert entries, f"{WORKFLOW.relative_to(ROOT)}: no matrix entry names a lane"
    return entries


def _gpu_runner(runs_on: object) -> bool:
    """Whether a ``runs-on`` value (a label or a list of labels) asks for a GPU runner."""
    labels = [runs_on] if isinstance(runs_on, str) else runs_on if isinstance(runs_on, list) else []
    return any("gpu" in str(label).lower() for label in labels)


def test_workflow_lanes_are_known():
    found = {str(entry["lane"]) for entry in _workflow_lanes()}
    unknown = sorted(found - set(LANES))
    assert not unknown, (f"{WORKFLOW.relative_to(ROOT)}: lanes {unknown} are not in "
                         f"pytest_invarlock/lanes.py (known: {LANE_IDS})")


def test_workflow_runs_cuda_lanes_on_gpu_runners():
    where = WORKFLOW.relative_to(ROOT)
    for entry in _workflow_lanes():
        lane = LANES.get(str(entry["lane"]))
        if lane is None:
            continue  # reported by test_workflow_lanes_are_known
        gpu = _gpu_runner(entry.get("runs-on"))
        assert gpu == (lane.device == "cuda"), (
            f"{where}: lane {lane.id} (device {lane.device}) runs on {entry.get('runs-on')!r}, "
            f"{'a GPU' if gpu else 'not a GPU'} runner; it must run on a GPU runner iff its device "
            f"is cuda")


# -- README --------------------------------------------------------------------------------------

def _readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start:] if end == -1 else text[start:end]


def test_readme_session_table_lists_every_lane():
    rows = [line for line in _readme_section("## nox sessions").splitlines()
            if line.startswith("|") and "`lane-" in line.split("|")[1]]
    assert len(rows) == 1, f"README.md: expected one nox sessions row of lane sessions, got {rows}"
    found = set(re.findall(r"`lane-([\w-]+)`", rows[0].split("|")[1]))
    assert found == set(LANES), _disagreement("README.md's nox sessions row", found, set(LANES))


def test_readme_lane_option_lists_every_lane():
    match = re.search(r"`--invarlock-lane=([^`]*)`", _readme_section("## Options and lanes"))
    assert match, "README.md: the options table has no `--invarlock-lane=...` row"
    found = set(match.group(1).split("\\|")) - {AUTO}
    assert found == set(LANES), _disagreement("README.md's --invarlock-lane row", found, set(LANES))


# -- noxfile.py ----------------------------------------------------------------------------------

@functools.cache
def _nox_sessions() -> dict[str, str]:
    """``nox -l``: session name -> description (nox imports noxfile.py, which reads lanes.py)."""
    pytest.importorskip("nox")
    out = subprocess.run([sys.executable, "-m", "nox", "-l", "-f", str(NOXFILE)], cwd=ROOT,
                         capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 0, f"noxfile.py: `nox -l` failed:\n{out.stdout}\n{out.stderr}"
    return dict(re.findall(r"^[*-] (\S+) -> (.*)$", out.stdout, flags=re.M))


def test_noxfile_reads_the_lane_table_from_lanes_py():
    source = NOXFILE.read_text(encoding="utf-8")
    assert "lanes.py" in source and "spec_from_file_location" in source, (
        "noxfile.py must generate its lane sessions from pytest_invarlock/lanes.py, not a copy")


def test_nox_has_one_session_per_lane():
    found = {name[len("lane-"):] for name in _nox_sessions() if name.startswith("lane-")}
    assert found == set(LANES), _disagreement("noxfile.py's `nox -l` lane sessions", found, set(LANES))


@pytest.mark.parametrize("lane", LANE_IDS)
def test_nox_lane_session_describes_its_lane(lane: str):
    """The description is generated from the Lane row and from the torch pin the session uses."""
    row: Lane = LANES[lane]
    description = _nox_sessions().get(_session(lane))
    if description is None:
        pytest.fail(f"noxfile.py: lane {lane} has no session {_session(lane)}")
    assert row.description in description, (
        f"noxfile.py: session {_session(lane)} does not describe lane {lane} as in lanes.py "
        f"({row.description!r}): {description!r}")
    pinned = "CPU torch" in description
    assert pinned == (row.device == "cpu"), (
        f"noxfile.py: session {_session(lane)} (device {row.device}) "
        f"{'pins' if pinned else 'does not pin'} the CPU torch; it must iff the device is cpu")


# -- the --invarlock-lane option -----------------------------------------------------------------

@functools.cache
def _lane_option_help() -> tuple[set[str], str]:
    """``pytest --help``'s --invarlock-lane entry: its choices and its help text, unwrapped."""
    env = {**os.environ, "COLUMNS": "1000"}  # one line per entry: no hyphen breaks in lane ids
    out = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 0, f"pytest --help failed:\n{out.stdout}\n{out.stderr}"
    match = re.search(r"^\s+--invarlock-lane=\{([^}]*)\}(.*?)(?=^\s+-|^\S|\Z)", out.stdout,
                      flags=re.M | re.S)
    assert match, f"pytest --help has no --invarlock-lane={{...}} entry:\n{out.stdout}"
    return set(match.group(1).split(",")), " ".join(match.group(2).split())


def test_lane_option_choices_are_the_lanes():
    choices, _ = _lane_option_help()
    assert choices == {*LANES, AUTO}, _disagreement(
        "pytest_invarlock/plugin.py's --invarlock-lane choices", choices - {AUTO}, set(LANES))


@pytest.mark.parametrize("lane", LANE_IDS)
def test_lane_option_help_names_the_lane(lane: str):
    _, text = _lane_option_help()
    assert _mentions(text, lane), (
        f"pytest_invarlock/plugin.py: the --invarlock-lane help does not name lane {lane}: {text!r}")


@pytest.mark.parametrize("lane", LANE_IDS)
def test_tox_installs_the_extras_of_its_lane(lane: str):
    """A quantized lane's backends come from its extras, in nox (lanes.py) and tox alike."""
    section = f"testenv:{_session(lane)}"
    extras = {e.strip() for e in _tox().get(section, "extras", fallback="dev").split(",")}
    assert extras == {"dev", *LANES[lane].extras}, f"tox.ini: [{section}] extras are {extras}"


@pytest.mark.parametrize("lane", [lane for lane in LANE_IDS if LANES[lane].workers])
def test_tox_runs_a_lane_with_its_workers(lane: str):
    """A lane run with xdist workers in nox (lanes.py) is run with them in tox too."""
    commands = _tox().get(f"testenv:{_session(lane)}", "commands", fallback="").split()
    assert f"-n {LANES[lane].workers}" in " ".join(commands), (
        f"tox.ini: [testenv:{_session(lane)}] does not run -n {LANES[lane].workers}")
