"""The reference snapshot format: safetensors-compatible, atomic, bounded, never pickle."""

import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch

from pytest_invarlock.adapters import snapshot as snap
from pytest_invarlock.adapters.roles import HFCausalAdapter
from pytest_invarlock.errors import SnapshotError
from pytest_invarlock.hf_adapter import state


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


# --------------------------------------------------------------------------- chunk handles


def _chunk_files(path):
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    return [Path(path) / c["file"] for c in manifest["chunks"]]


def _bits(model):
    return {n: state.bits(s.tensor).clone() for n, s in snap.model_slots(model).items()}


def _assert_bits(model, expected):
    got = _bits(model)
    assert set(got) == set(expected)
    for name, b in expected.items():
        assert torch.equal(got[name], b), name


def test_chunk_swapped_after_verification_is_never_read(model, tmp_path, monkeypatch):
    verified = _bits(model)
    path = snap.snapshot_chunked(model, directory=tmp_path, chunk_bytes=4096)
    state.perturb(model, seed=1)
    swapped_in = _bits(model)
    other = snap.snapshot_chunked(model, directory=tmp_path, chunk_bytes=4096)
    assert [f.name for f in _chunk_files(path)] == [f.name for f in _chunk_files(other)]
    state.perturb(model, seed=2)
    real_open_chunk = snap._open_chunk
    swapped = []

    def open_then_swap(root, entry, stack):
        chunk = real_open_chunk(root, entry, stack)  # opened and verified...
        os.replace(Path(other) / entry["file"], Path(root) / entry["file"])  # ...then replaced
        swapped.append(entry["file"])
        return chunk

    monkeypatch.setattr(snap, "_open_chunk", open_then_swap)
    snap.restore_chunked(model, path)
    assert swapped == [f.name for f in _chunk_files(path)]  # every chunk was swapped on disk
    _assert_bits(model, verified)  # yet only the verified bytes were restored
    assert any(not torch.equal(verified[n], swapped_in[n]) for n in verified)


def test_each_chunk_file_is_opened_exactly_once(model, tmp_path, monkeypatch):
    import builtins
    import io

    path = snap.snapshot_chunked(model, directory=tmp_path, chunk_bytes=4096)
    chunks = {f.name for f in _chunk_files(path)}
    opened: list[str] = []

    def counting(real):
        def wrapper(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and os.path.basename(os.fspath(file)) in chunks:
                opened.append(os.path.basename(os.fspath(file)))
            return real(file, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(os, "open", counting(os.open))
    monkeypatch.setattr(builtins, "open", counting(builtins.open))
    monkeypatch.setattr(io, "open", counting(io.open))
    state.perturb(model)
    snap.restore_chunked(model, path)
    assert sorted(opened) == sorted(chunks)  # each chunk once, none twice


@pytest.mark.parametrize("chunk_bytes", [1, 4096, snap.DEFAULT_CHUNK_BYTES])
def test_multi_chunk_snapshots_round_trip_bit_exactly(model, tmp_path, chunk_bytes):
    with torch.no_grad():  # values a float comparison would blur: -0.0, NaN payloads, infinities
        w = model.model.layers[0].mlp.up_proj.weight.view(-1)
        w[:4] = torch.tensor([-0.0, float("inf"), float("-inf"), 0.0])
        w[4:6].view(torch.int32).copy_(torch.tensor([0x7FC00001, -0x3FFFFF]))
    expected = _bits(model)
    path = snap.snapshot_chunked(model, directory=tmp_path, chunk_bytes=chunk_bytes)
    files = _chunk_files(path)
    assert (len(files) > 10) if chunk_bytes == 1 else len(files) >= 1
    for file in files:  # every chunk is a safetensors file in its own right
        assert safetensors.torch.load_file(str(file))
    state.perturb(model)
    snap.restore_chunked(model, path)
    _assert_bits(model, expected)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tie re-bound


def test_new_snapshots_record_the_checksum_algorithm(model, tmp_path):
    path = snap.snapshot_chunked(model, directory=tmp_path, chunk_bytes=4096)
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    for chunk in manifest["chunks"]:
        assert len(chunk["xxh3_128"]) == 32 and "sha256" not in chunk
    blob = bytes(snap.snapshot_bytes(model))
    n = int.from_bytes(blob[:8], "little")
    meta = json.loads(blob[8:8 + n])["__metadata__"]
    assert set(json.loads(meta["xxh3_128"])) == set(snap.unique_tensors(model)[0])
    assert "crc32" not in meta


def _legacy_manifest(path):
    """Rewrite a manifest the way snapshots before xxh3 were written (sha256 per chunk)."""
    import hashlib

    file = Path(path) / "manifest.json"
    manifest = json.loads(file.read_text())
    for chunk in manifest["chunks"]:
        del chunk["xxh3_128"]
        chunk["sha256"] = hashlib.sha256((Path(path) / chunk["file"]).read_bytes()).hexdigest()
    file.write_text(json.dumps(manifest, indent=1, sort_keys=True))


def test_old_sha256_manifests_still_restore(model, tmp_path):
    expected = _bits(model)
    path = snap.snapshot_chunked(model, directory=tmp_path, chunk_bytes=4096)
    _legacy_manifest(path)
    state.perturb(model)
    snap.restore_chunked(model, path)
    _assert_bits(model, expected)


def test_old_sha256_manifests_are_still_verified(model, tmp_path):
    path = snap.snapshot_chunked(model, directory=tmp_path, chunk_bytes=4096)
    _legacy_manifest(path)
    last = _chunk_files(path)[-1]
    data = bytearray(last.read_bytes())
    data[-1] ^= 1
    last.write_bytes(bytes(data))
    state.perturb(model)
    before = state.capture(model)
    with pytest.raises(SnapshotError, match="sha256 checksum"):
        snap.restore_chunked(model, path)
    assert state.diff(model, before) == []


def test_old_crc32_bytes_snapshots_still_restore(model):
    import zlib

    tensors, aliases = snap.unique_tensors(model)
    data = {n: t.detach().contiguous() for n, t in tensors.items()}
    crcs = {n: f"{zlib.crc32(state.bits(t).numpy().tobytes()):08x}" for n, t in data.items()}
    blob = safetensors.torch.save(data, metadata={
        "format": snap.FORMAT, "aliases": json.dumps(aliases), "crc32": json.dumps(crcs)})
    expected = _bits(model)
    state.perturb(model)
    snap.restore_bytes(model, blob)
    _assert_bits(model, expected)


def test_a_corrupted_late_chunk_leaves_the_model_untouched(model, tmp_path):
    path = snap.snapshot_chunked(model, directory=tmp_path, chunk_bytes=4096)
    last = _chunk_files(path)[-1]
    data = bytearray(last.read_bytes())
    data[-1] ^= 0x80
    last.write_bytes(bytes(data))
    state.perturb(model)
    before = state.capture(model)
    with pytest.raises(SnapshotError, match="xxh3_128 checksum"):
        snap.restore_chunked(model, path)
    assert state.diff(model, before) == []


def test_a_symlinked_chunk_is_refused(model, tmp_path):
    path = snap.snapshot_chunked(model, directory=tmp_path, chunk_bytes=4096)
    first = _chunk_files(path)[0]
    moved = tmp_path / "elsewhere.safetensors"
    os.replace(first, moved)
    first.symlink_to(moved)  # same bytes, but reached through a link
    with pytest.raises(SnapshotError, match="cannot be opened"):
        snap.restore_chunked(model, path)


def test_non_contiguous_targets_go_through_one_bounded_buffer(model, tmp_path, monkeypatch):
    proj = model.model.layers[0].mlp.up_proj
    proj.weight = torch.nn.Parameter(proj.weight.detach().t().contiguous().t())
    assert not proj.weight.is_contiguous()
    expected = _bits(model)
    path = snap.snapshot_chunked(model, directory=tmp_path)
    state.perturb(model)
    sizes = []
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: sizes.append(a) or real_empty(*a, **k))
    snap.restore_chunked(model, path)
    assert sizes == [(proj.weight.numel() * proj.weight.element_size(),)]  # one tensor's worth
    _assert_bits(model, expected)
    assert not proj.weight.is_contiguous()  # restored in place, layout kept


def test_bytes_round_trip_through_non_contiguous_tensors(model):
    proj = model.model.layers[0].mlp.up_proj
    proj.weight = torch.nn.Parameter(proj.weight.detach().t().contiguous().t())
    expected = _bits(model)
    blob = snap.snapshot_bytes(model)  # the non-contiguous source is copied by torch, not memcpy
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(state.bits(safetensors.torch.load(bytes(blob))[name]), expected[name])
    state.perturb(model)
    snap.restore_bytes(model, blob)
    _assert_bits(model, expected)
    assert not proj.weight.is_contiguous()
