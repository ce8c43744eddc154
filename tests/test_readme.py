"""The README's quick-start commands work on a Python whose pip is externally managed (PEP 668).

Debian's and Ubuntu's system ``python3`` refuse ``pip install`` outside a virtualenv, so each
quick-start command must create its own virtualenv with ``python3 -m venv`` and install only
through that virtualenv's interpreter, in a directory that git ignores. Parsing only: no network,
no installs.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
QUICK_START = "## Quick start"
NEXT_SECTION = "## Running the suite against your adapter"
MARKER = "<!-- test-command -->"


def _quick_start() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(QUICK_START)
    return text[start:text.index(NEXT_SECTION, start)]


def _test_command() -> str:
    """The command exactly as ``.ci/run`` extracts it: the second line after the marker."""
    lines = README.read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if MARKER in line)
    assert lines[at + 1].strip() == "```bash", "the test command's ```bash fence must follow the marker"
    return lines[at + 2]


def _main_command() -> str:
    """The first command of the quick start: the one-line ```bash block before the marker."""
    section = _quick_start()
    blocks = re.findall(r"```bash\n(.*?)```", section[:section.index(MARKER)], flags=re.S)
    assert blocks, "the quick start has no ```bash block before the test command"
    lines = blocks[0].strip().splitlines()
    assert len(lines) == 1, f"the main-job command must be one line, got {lines}"
    return lines[0]


COMMANDS = {"main job": _main_command, "tests": _test_command}


def _steps(command: str) -> list[list[str]]:
    """Split a one-line ``a && b && c`` command into its steps, each as argv."""
    assert "\n" not in command
    for op in (";", "||", "|", "`", "$("):
        assert op not in command.replace("&&", ""), f"expected steps joined by && only: {command!r}"
    return [shlex.split(part) for part in command.split("&&")]


def _venv_of(steps: list[list[str]]) -> str:
    """The directory the command's first step creates with ``python3 -m venv DIR``."""
    first = steps[0]
    assert first[:3] == ["python3", "-m", "venv"], (
        f"the command must start by creating a virtualenv with `python3 -m venv DIR`, got {first}")
    args = [a for a in first[3:] if not a.startswith("-")]
    assert len(args) == 1, f"`python3 -m venv` must create exactly one directory, got {first}"
    venv = args[0].rstrip("/")
    assert not Path(venv).is_absolute() and ".." not in Path(venv).parts, (
        f"the virtualenv must live inside the checkout, got {venv!r}")
    assert venv not in (".venv", "venv", ".nox"), (
        f"{venv!r} is the developers' own virtualenv or nox's directory; use a dedicated one")
    return venv


def _is_pip_install(argv: list[str]) -> bool:
    exe = Path(argv[0]).name if argv else ""
    if re.fullmatch(r"pip[0-9.]*", exe):
        return "install" in argv[1:]
    return argv[1:3] == ["-m", "pip"] and "install" in argv[3:]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_quick_start_command_uses_its_own_venv(name: str) -> None:
    command = COMMANDS[name]()
    steps = _steps(command)
    venv = _venv_of(steps)
    venv_python = {f"{venv}/bin/python", f"{venv}/bin/python3"}
    installs = [i for i, argv in enumerate(steps) if _is_pip_install(argv)]
    assert installs, f"{name}: the command installs nothing: {command!r}"
    for i, argv in enumerate(steps[1:], start=1):
        exe = argv[0]
        if exe.startswith(("python", "pip", "nox")):
            pytest.fail(f"{name}: step {i} `{' '.join(argv)}` runs outside {venv}/: an externally "
                        f"managed pip (PEP 668) refuses it; use {venv}/bin/python -m ...")
        assert exe in venv_python, (
            f"{name}: step {i} `{' '.join(argv)}` must run through {venv}/bin/python")
    assert min(installs) > 0, f"{name}: pip install before the virtualenv exists"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_quick_start_command_runs_its_session(name: str) -> None:
    steps = _steps(COMMANDS[name]())
    venv = _venv_of(steps)
    last = steps[-1]
    assert last[:3] == [f"{venv}/bin/python", "-m", "nox"], last
    sessions = last[last.index("-s") + 1:]
    expected = ["tests"] if name == "tests" else ["lane-cpu", "support_matrix"]
    assert sessions == expected


def _ignored_by_gitignore(path: str) -> bool:
    """Fallback without git: does a line of .gitignore match ``path`` (a directory)?"""
    for raw in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith(("#", "!")):
            continue
        pattern = pattern.lstrip("/").rstrip("/")
        if fnmatch.fnmatchcase(path, pattern):
            return True
    return False


def test_quick_start_venv_is_git_ignored() -> None:
    venvs = {_venv_of(_steps(get())) for get in COMMANDS.values()}
    git = shutil.which("git")
    inside = git and subprocess.run([git, "rev-parse", "--is-inside-work-tree"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip() == "true"
    for venv in venvs:
        if inside:
            for path in (f"{venv}/", f"{venv}/bin/python", f"{venv}/pyvenv.cfg"):
                proc = subprocess.run([git, "check-ignore", "-q", "--no-index", path], cwd=ROOT)
                assert proc.returncode == 0, f"{path} is not ignored by .gitignore"
        else:
            assert _ignored_by_gitignore(venv), f"{venv}/ is not ignored by .gitignore"


def test_gitignore_fallback_parser() -> None:
    assert _ignored_by_gitignore(".nox")
    assert not _ignored_by_gitignore("pytest_invarlock")


def test_step_parser_rejects_bare_pip() -> None:
    old = "python3 -m pip install nox && python3 -m nox -s tests"
    with pytest.raises(AssertionError, match="python3 -m venv"):
        _venv_of(_steps(old))
    assert _is_pip_install(["pip", "install", "nox"])
    assert _is_pip_install(["python3", "-m", "pip", "install", "nox"])
    assert not _is_pip_install([".venv-nox/bin/python", "-m", "nox", "-s", "tests"])
