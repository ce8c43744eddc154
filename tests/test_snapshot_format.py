"""The reference snapshot format: safetensors-compatible, atomic, bounded, never pickle."""

import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch

from pytest_invarlock import state
from pytest_invarlock.adapters import snapshot as snap
from pytest_invarlock.adapters.roles import HFCausalAdapter
from pytest_invarlock.errors import SnapshotError


@pytest.fixture
def model(fixture_dir):
    return HFCausalAdapter().load_model(fixture_dir("llama-gqa-tied"), device="cpu")


def test_bytes_snapshot_is_a_safetensors_buffer_with_every_tensor(model):
    blob = snap.snapshot_bytes(model)
    loaded = safetensors.torch.load(bytes(blob))
    tensors, aliases = snap.unique_tensors(model)
    assert set(loaded) == set(tensors)
    assert aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    assert "model.rotary_emb.inv_freq" in loaded  # non-persistent buffers are stored too
    for name, t in tensors.items():
        assert torch.equal(state.bits(loaded[name]), state.bits(t))


def test_chunked_snapshot_splits_and_reads_back(model, tmp_path):
    path = snap.snapshot_chunked(model, directory=tmp_path, chunk_bytes=4096)
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    assert len(manifest["chunks"]) > 3
    files = sorted(p.name for p in Path(path).iterdir())
    assert files == sorted(["manifest.json", *(c["file"] for c in manifest["chunks"])])
    before = state.capture(model)
    state.perturb(model)
    snap.restore_chunked(model, path)
    assert state.diff(model, before) == []


def test_restore_leaves_model_untouched_when_a_late_key_mismatches(model):
    blob = snap.snapshot_bytes(model)
    model.model.norm.weight.data = model.model.norm.weight.data.double()  # last key differs
    before = state.capture(model)
    with pytest.raises(SnapshotError, match=r"'model.norm.weight' is torch.float32"):
        snap.restore_bytes(model, blob)
    assert state.diff(model, before) == []


def test_tampered_header_offsets_are_refused(model):
    blob = bytearray(snap.snapshot_bytes(model))
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 4
    raw = json.dumps(header).encode()
    raw += b" " * (n - len(raw)) if len(raw) <= n else b""
    with pytest.raises(SnapshotError, match=name.replace(".", r"\.")):
        snap.restore_bytes(model, bytes(len(raw).to_bytes(8, "little") + raw + blob[8 + n:]))


@pytest.mark.parametrize("name", ["../chunk-00000.safetensors", "/etc/passwd", "chunk-0.bin"])
def test_manifest_names_outside_the_pattern_are_refused(model, tmp_path, name):
    path = Path(snap.snapshot_chunked(model, directory=tmp_path))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["chunks"][0]["file"] = name
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match="not allowed"):
        snap.restore_chunked(model, path)


def test_restore_untied_snapshot_into_tied_model_unties(model):
    head = model.lm_head
    head.weight = torch.nn.Parameter(head.weight.detach().clone() + 1)
    blob = snap.snapshot_bytes(model)  # two separate tensors
    expected = state.capture(model)
    model.tie_weights()  # now tied again: the snapshot disagrees
    snap.restore_bytes(model, blob)
    assert state.diff(model, expected) == []


def test_snapshot_copies_straight_into_the_buffer(model, monkeypatch):
    """No clone-then-serialize chain: safetensors' serializer and Tensor.clone are never used."""
    monkeypatch.setattr(safetensors.torch, "save", None)
    monkeypatch.setattr(torch.Tensor, "clone", None)
    blob = snap.snapshot_bytes(model)
    assert isinstance(blob, memoryview) and blob.readonly


def test_chunked_restore_reads_directly_into_parameters(model, tmp_path, monkeypatch):
    path = snap.snapshot_chunked(model, directory=tmp_path)
    state.perturb(model)
    ptr = model.model.layers[0].mlp.up_proj.weight.data_ptr()
    calls = []
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: calls.append(a) or real_empty(*a, **k))
    snap.restore_chunked(model, path)
    assert calls == []  # CPU tensors need no staging buffer
    assert model.model.layers[0].mlp.up_proj.weight.data_ptr() == ptr


def test_restore_refuses_non_buffers(model):
    with pytest.raises(SnapshotError, match="bytes-like"):
        snap.restore_bytes(model, "not bytes")


def test_snapshot_directory_uses_prefix(model, tmp_path):
    path = HFCausalAdapter().snapshot_chunked(model, prefix="mine-", directory=str(tmp_path))
    assert os.path.basename(path).startswith("mine-")


def test_a_late_mismatch_does_not_untie_anything_first(model):
    head = model.lm_head
    head.weight = torch.nn.Parameter(head.weight.detach().clone() + 1)
    blob = snap.snapshot_bytes(model)  # lm_head stored apart from the embedding
    model.tie_weights()  # restoring would untie lm_head again...
    rotary = model.model.rotary_emb
    rotary.inv_freq = rotary.inv_freq.double()  # ...but this buffer, checked after it, differs
    before = state.capture(model)
    with pytest.raises(SnapshotError, match=r"model\.rotary_emb\.inv_freq"):
        snap.restore_bytes(model, blob)
    assert state.diff(model, before) == []  # still tied: nothing was changed
