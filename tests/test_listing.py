"""python -m pytest_invarlock adapters [--json]: readiness of every discovered adapter."""

import json
import subprocess
import sys

from pytest_invarlock.resources import validate


def _fake(root, name, entry):
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[invarlock.adapters]\n{entry}\n")


def test_listing_validates_and_says_why_an_adapter_is_not_ready(tmp_path):
    _fake(tmp_path, "needs-bnb", "hf_fake_bnb = fake_bnb_adapter:Adapter")
    (tmp_path / "fake_bnb_adapter.py").write_text("import bitsandbytes_not_here\n")
    _fake(tmp_path, "gone", "hf_gone = gone_module:Adapter")
    out = subprocess.run([sys.executable, "-m", "pytest_invarlock", "adapters", "--json"],
                         capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(tmp_path)}).stdout
    listing = json.loads(out)
    assert validate(listing, "adapter_listing") == []
    by_name = {a["name"]: a for a in listing["adapters"]}
    assert by_name["hf_causal"]["status"] == "ready"
    assert by_name["hf_causal"]["capabilities"]["snapshot_restore"] == "full"
    assert by_name["hf_auto"]["capabilities"]["snapshot_restore"] == "delegated"
    assert (by_name["hf_fake_bnb"]["status"], by_name["hf_fake_bnb"]["origin"]) == (
        "needs_extra", "third_party")
    assert by_name["hf_gone"]["status"] == "unsupported"
    assert "cannot be imported" in by_name["hf_gone"]["problem"]


def test_listing_table_is_readable():
    out = subprocess.run([sys.executable, "-m", "pytest_invarlock", "adapters"],
                         capture_output=True, text=True, check=True).stdout
    assert "hf_seq2seq" in out and "snapshot=full" in out
