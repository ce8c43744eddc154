"""An adapter author's path: install the wheel, register an adapter, run the one command."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_invarlock.api import check_adapter

REPO = Path(__file__).parents[1]
THROWAWAY = """
from pytest_invarlock.adapters.roles import HFCausalAdapter


class ThrowawayAdapter(HFCausalAdapter):
    name = "throwaway"
"""


def _package(root: Path) -> None:
    """Write an installed adapter package: its module and its dist-info with the entry point."""
    root.mkdir(parents=True)
    (root / "throwaway_adapter.py").write_text(THROWAWAY)
    info = root / "throwaway_adapter-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: throwaway-adapter\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[invarlock.adapters]\nthrowaway = throwaway_adapter:ThrowawayAdapter\n")


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory):
    """Build this project's wheel and install it into its own directory (torch & co reused).

    That directory goes first on PYTHONPATH, so the installed wheel, not this checkout, is what
    the subprocesses import and collect.
    """
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp / "dist"), str(REPO)], check=True)
    wheel = next((tmp / "dist").glob("pytest_invarlock-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(tmp / "site"), str(wheel)], check=True)
    return tmp / "site"


def test_wheel_ships_conformance_contracts_and_fixtures(wheel_site):
    code = ("import pytest_invarlock.resources as r; print(r.data_path('conformance'), "
            "r.data_path('fixtures', 'remote_code', 'config.json').is_file(), "
            "r.data_path('contracts', 'adapter_capabilities.json').is_file())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd="/", env={"PYTHONPATH": str(wheel_site)}).stdout.split()
    assert out == [str(wheel_site / "pytest_invarlock" / "_data" / "conformance"), "True", "True"]


def test_adapter_author_runs_the_documented_command(wheel_site, tmp_path, fixture_dir):
    _package(tmp_path / "site")
    model = fixture_dir("gpt2")
    env = {"PYTHONPATH": f"{wheel_site}:{tmp_path / 'site'}", "HF_HUB_OFFLINE": "1",
           "PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
           "INVARLOCK_FIXTURES_DIR": str(model.parent)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest_invarlock", "run", "--invarlock-adapter=throwaway",
         f"--invarlock-model={model}", "--invarlock-report=r.json", "-q", "-p",
         "no:cacheprovider"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert all("_data/conformance" in r["nodeid"] for r in report["records"])
    assert report["adapters"][0]["origin"] == "third_party"
    assert report["adapters"][0]["distribution"] == "throwaway-adapter"
    sys.path.insert(0, str(tmp_path / "site"))
    try:
        from throwaway_adapter import ThrowawayAdapter

        api = {r.check: r.outcome for r in check_adapter(ThrowawayAdapter(), model)}
    finally:
        sys.path.remove(str(tmp_path / "site"))
    assert {r["check"]: r["outcome"] for r in report["records"]} == api
