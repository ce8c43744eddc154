"""Checks that bad snapshots are refused with a clear error and leave the model bit-identical."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pytest_invarlock.errors import CheckFailed, CheckNotApplicable
from pytest_invarlock.hf_adapter import capabilities, state
from pytest_invarlock.hf_adapter.checks import (
    SHOULD,
    CheckContext,
    Problems,
    check,
    discard_snapshot,
    summarize,
)


def refusal_problem(model: nn.Module, action: Callable[[], object], what: str) -> str | None:
    """Return why restoring ``what`` was not a clean refusal, or None when it was.

    A clean refusal raises an error with a message and leaves ``model`` bit-identical.
    """
    before = state.capture(model)
    try:
        action()
    except Exception as exc:
        if not str(exc).strip():
            return f"restoring {what} raised {type(exc).__name__} with no message"
    else:
        return f"restoring {what} succeeded"
    changed = state.diff(model, before)
    if changed:
        state.reset(model, before)  # so the next sub-case starts from the same model
        return f"restoring {what} raised but changed the model first ({summarize(changed, 3)})"
    return None


FIX = ("Validate the whole snapshot (header, names, shapes, dtypes, sizes) before copying any "
       "tensor, raise an error that says which file, key or check failed, and leave the model "
       "untouched")


def expect_refusal(model: nn.Module, action: Callable[[], object], what: str) -> None:
    """Require ``action`` to raise a non-empty error and to leave ``model`` bit-identical."""
    problem = refusal_problem(model, action, what)
    if problem:
        raise CheckFailed(f"{problem}. {FIX}")


def _refusals(model: nn.Module, cases: Iterable[tuple[str, Callable[[], object]]],
              fix: str = FIX) -> None:
    """Try every (what, action) sub-case and fail once, listing every one not cleanly refused."""
    problems = Problems()
    for what, action in cases:
        problem = refusal_problem(model, action, what)
        if problem:
            problems.add(problem)
    problems.raise_if_any(fix)


def _restoring(adapter: Any, model: nn.Module, blob: object) -> Callable[[], object]:
    """Return the action that restores ``blob`` into ``model``."""
    return lambda: adapter.restore(model, blob)


def _restoring_edit(adapter: Any, model: nn.Module, edit: Callable[[bytes, int], bytes],
                    blob: bytes, at: int) -> Callable[[], object]:
    """Return the action that restores ``edit(blob, at)`` into ``model`` (built when it runs)."""
    return lambda: adapter.restore(model, edit(blob, at))


def _take(adapter: Any, model: nn.Module) -> Any:
    """Return a snapshot; a refusal allowed by the adapter's claim makes the check not apply."""
    try:
        return adapter.snapshot(model)
    except Exception as exc:
        if capabilities.snapshot_claim(adapter) == "full":
            raise
        raise CheckNotApplicable(f"snapshot() refuses ({exc}), as snapshot_restore="
                                 f"{capabilities.snapshot_claim(adapter)!r} allows") from None


def _need_chunked(adapter: Any) -> None:
    if not hasattr(adapter, "snapshot_chunked"):
        raise CheckNotApplicable("adapter has no snapshot_chunked()")
    if capabilities.snapshot_claim(adapter) != "full":
        raise CheckNotApplicable("chunk tampering is judged for snapshot_restore='full' only")


@contextmanager
def _chunked(adapter: Any, model: nn.Module) -> Iterator[Path]:
    path = Path(adapter.snapshot_chunked(model, prefix="invarlock-check-"))
    try:
        yield path
    finally:
        discard_snapshot(path)


def _data_files(root: Path) -> list[Path]:
    """Return the snapshot's files, largest first (data chunks before manifests)."""
    files = [p for p in root.rglob("*") if p.is_file()]
    return sorted(files, key=lambda p: (-p.stat().st_size, p.name))


def _foreign_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return a model of another family and, where the config has a depth, this class deeper.

    Building the deeper model must work for every config the suite bundles: a failure here is
    the suite's own error and propagates (it never silently drops the case).
    """
    from pytest_invarlock.hf_adapter.fixtures import build_model, catalog

    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    other = next(f for f in catalog().values() if f.config["model_type"] != model_type)
    found = [(f"a {other.family} model", build_model(other))]
    deeper = _deeper(config) if config is not None else None
    if deeper is not None:
        other_model = type(model)(deeper).eval()
        if _shapes(other_model) != _shapes(model):  # ALBERT shares layers: same state, no test
            found.append((f"{type(model).__name__} with one more layer", other_model))
    return found


#: Config keys holding a depth, in the order they are tried (decoder_layers: BART decoders).
_DEPTHS = ("num_hidden_layers", "n_layer", "num_layers", "decoder_layers")


def _deeper(config: Any) -> Any:
    """Return a copy of ``config`` with one more layer (None when it names no depth)."""
    settings = config.to_dict()
    return type(config).from_dict(settings) if _deepen(settings) else None


def _deepen(settings: dict[str, Any]) -> bool:
    """Add a layer to a config dict (its text config's, when nested); per-layer lists grow too."""
    for key in _DEPTHS:
        depth = settings.get(key)
        if isinstance(depth, int) and depth > 0:
            for name, value in list(settings.items()):
                if isinstance(value, list) and len(value) == depth:
                    settings[name] = [*value, value[depth % _period(value)]]
            settings[key] = depth + 1
            return True
    text = settings.get("text_config")
    return isinstance(text, dict) and _deepen(text)


def _period(values: list[Any]) -> int:
    """Return the length of the shortest pattern that ``values`` repeats."""
    return next(p for p in range(1, len(values) + 1)
                if all(values[i] == values[i % p] for i in range(len(values))))


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(t.shape) for n, (t, _) in state.named_tensors(model).items()}


@check(mutates=True, why="restoring another model's state is silent corruption")
def check_restore_rejects_foreign_snapshot(adapter: Any, model: nn.Module,
                                           ctx: CheckContext) -> None:
    """restore() refuses a snapshot of another architecture, and of this one with another depth."""
    _take(adapter, model)
    blobs = [(label, adapter.snapshot(foreign)) for label, foreign in _foreign_models(model)]
    _refusals(model, [(f"a snapshot of {label}", _restoring(adapter, model, blob))
                      for label, blob in blobs],
              "Check that the snapshot's names, shapes and dtypes are exactly the model's before "
              "copying anything, and raise otherwise")


@check(mutates=True, why="a cut-short snapshot (a full disk, a broken transfer) must never be "
       "half-restored")
def check_restore_rejects_truncated_blob(adapter: Any, model: nn.Module,
                                         ctx: CheckContext) -> None:
    """restore() refuses a snapshot cut short anywhere (header, data, last byte)."""
    blob = bytes(_take(adapter, model))
    _refusals(model, [(f"a snapshot truncated to {cut} of {len(blob)} bytes",
                       _restoring_edit(adapter, model, _truncated, blob, cut))
                      for cut in sorted({0, 4, len(blob) // 2, len(blob) - 1})])


def payload_offsets(data: bytes, model: nn.Module, count: int = 2) -> list[tuple[int, str]]:
    """Return up to ``count`` offsets inside ``data`` that hold tensor values, with the tensor.

    The offsets are found by searching ``data`` for the raw bytes of the model's largest
    tensors, so a flip there changes a value, never a header, whatever the snapshot format.
    """
    seen, found = set(), []
    tensors = sorted(state.named_tensors(model).items(), key=lambda kv: (-kv[1][0].numel(), kv[0]))
    for name, (t, _) in tensors:
        key = state.storage_key(t)
        if key in seen or t.numel() * t.element_size() < 64:
            continue
        seen.add(key)
        raw = bytes(state.bits(t)[:64].numpy())
        at = data.find(raw)
        if at >= 0 and len(set(raw)) > 4:
            found.append((at + 37, name))
        if len(found) == count:
            break
    return found


def _flips(data: bytes, model: nn.Module) -> list[tuple[int, str]]:
    """Return where to change a byte: inside tensor values, else (an encoded layout) mid-file."""
    found = [(at, f"inside {name!r}") for at, name in payload_offsets(data, model)]
    return found or [(len(data) * 5 // 8, "at 5/8 of the file: the tensor values are encoded"),
                     (len(data) * 3 // 4, "at 3/4 of the file")]


#: Byte classes a changed byte stays within, so a text encoding (hex, base64 inside JSON) stays
#: valid and only the decoded values change.
_CLASSES = (b"0123456789", b"abcdef", b"ghijklmnopqrstuvwxyz", b"ABCDEF",
            b"GHIJKLMNOPQRSTUVWXYZ")


def _truncated(data: bytes, cut: int) -> bytes:
    """Return the first ``cut`` bytes of ``data``."""
    return data[:cut]


def _flipped(data: bytes, at: int) -> bytes:
    """Return ``data`` with the byte at ``at`` changed, keeping it in its character class."""
    bad = bytearray(data)
    old = bad[at]
    cls = next((c for c in _CLASSES if old in c), None)
    bad[at] = cls[(cls.index(old) + 1) % len(cls)] if cls else old ^ 0x01
    return bytes(bad)


@check(mutates=True, level=SHOULD, why="bit flips in memory or on disk are rare; detecting them "
       "(a checksum) is hardening the protocol does not promise")
def check_restore_rejects_tampered_blob(adapter: Any, model: nn.Module,
                                        ctx: CheckContext) -> None:
    """restore() refuses a snapshot with one flipped byte inside a tensor's values."""
    blob = bytes(_take(adapter, model))
    _refusals(model, [(f"a snapshot with byte {at} of {len(blob)} changed ({where})",
                       _restoring_edit(adapter, model, _flipped, blob, at))
                      for at, where in _flips(blob, model)],
              "Store a checksum per tensor (or for the whole payload) and verify it before "
              "copying anything")


def _escape_variants(root: Path, outside: Path) -> Iterator[str]:
    """Rewrite the snapshot so it points outside its directory; yield what was done each time."""
    chunk = _data_files(root)[0]
    escaped = outside / chunk.name
    shutil.copy2(chunk, escaped)
    for manifest in [p for p in root.rglob("*.json") if p.is_file()]:
        text = manifest.read_text()
        if json.dumps(chunk.name) in text:
            original = text
            relative = os.path.relpath(escaped, manifest.parent)
            manifest.write_text(text.replace(json.dumps(chunk.name), json.dumps(relative)))
            yield f"a chunked snapshot whose {manifest.name} points at {relative!r}"
            manifest.write_text(original)
    saved = chunk.read_bytes()
    chunk.unlink()
    chunk.symlink_to(escaped)
    yield f"a chunked snapshot whose {chunk.name} is a symlink out of the directory"
    chunk.unlink()
    chunk.write_bytes(saved)


#: Variants of a chunk file's bytes: (new bytes, or None to remove the file; what was done).
Variants = Callable[[bytes, str], Iterator[tuple[bytes | None, str]]]


def _chunk_refusals(adapter: Any, model: nn.Module, variants: Variants, fix: str) -> None:
    """Rewrite a chunked snapshot's largest file by each variant; every restore must refuse.

    The file is put back after the last variant (and when a refusal check raises).
    """
    _need_chunked(adapter)
    with _chunked(adapter, model) as root:
        chunk = _data_files(root)[0]
        original = chunk.read_bytes()

        def restore() -> None:
            adapter.restore_chunked(model, str(root))

        def cases() -> Iterator[tuple[str, Callable[[], object]]]:
            try:
                for data, what in variants(original, chunk.name):
                    if data is None:
                        chunk.unlink()
                    else:
                        chunk.write_bytes(data)
                    yield what, restore
            finally:
                chunk.write_bytes(original)

        _refusals(model, cases(), fix)


@check(mutates=True, why="a chunk cut short or lost (a full disk, an interrupted copy) must "
       "never be half-restored")
def check_restore_chunked_rejects_damaged_chunks(adapter: Any, model: nn.Module,
                                                 ctx: CheckContext) -> None:
    """restore_chunked() refuses a snapshot whose largest file was cut short or is missing."""

    def damaged(original: bytes, name: str) -> Iterator[tuple[bytes | None, str]]:
        for cut in sorted({len(original) // 2, max(len(original) - 1, 0)}):
            yield (original[:cut], f"a chunked snapshot whose {name} was truncated to {cut} of "
                                   f"{len(original)} bytes")
        yield None, f"a chunked snapshot missing {name}"

    _chunk_refusals(adapter, model, damaged, "Record each file's size (or a checksum) in the "
                    "manifest, check every file before copying any tensor, and raise otherwise. "
                    f"{FIX}")


@check(mutates=True, level=SHOULD, why="bit flips on disk are rare; detecting them (a checksum "
       "per file) is hardening the protocol does not promise")
def check_restore_chunked_rejects_flipped_chunk(adapter: Any, model: nn.Module,
                                                ctx: CheckContext) -> None:
    """restore_chunked() refuses a snapshot with one flipped byte inside a tensor's values."""

    def flipped(original: bytes, name: str) -> Iterator[tuple[bytes | None, str]]:
        for at, where in _flips(original, model):
            yield (_flipped(original, at),
                   f"a chunked snapshot whose {name} has byte {at} changed ({where})")

    _chunk_refusals(adapter, model, flipped, "Record a checksum per file in the manifest and "
                    "verify every file before copying any tensor")


@check(mutates=True, level=SHOULD, why="reading files outside the snapshot directory is a "
       "path-traversal hazard, beyond what the protocol promises")
def check_restore_chunked_refuses_escaping_paths(adapter: Any, model: nn.Module,
                                                 ctx: CheckContext) -> None:
    """restore_chunked() reads nothing outside the snapshot directory (manifest paths, symlinks)."""
    _need_chunked(adapter)
    with _chunked(adapter, model) as root, tempfile.TemporaryDirectory(dir=root.parent) as outside:
        _refusals(model, ((what, lambda: adapter.restore_chunked(model, str(root)))
                          for what in _escape_variants(root, Path(outside))),
                  "Accept only plain file names listed in the manifest, refuse symlinks, and "
                  "resolve every path inside the snapshot directory")


@check(mutates=True, why="restoring into a model whose dtype changed would silently cast or "
       "corrupt values")
def check_restore_rejects_dtype_mismatch(adapter: Any, model: nn.Module,
                                         ctx: CheckContext) -> None:
    """restore() refuses a snapshot whose dtypes differ from the model's (e.g. after .half())."""
    if capabilities.forbids_moves(adapter, model):
        raise CheckNotApplicable("the model is placed by its backend (the adapter claims "
                                 "device_movement_managed_by_backend, or the model is quantized)")
    blob = _take(adapter, model)
    other = torch.float16 if next(model.parameters()).dtype != torch.float16 else torch.float32
    model.to(other)
    expect_refusal(model, lambda: adapter.restore(model, blob),
                   f"a snapshot into a model converted to {other}")


class _Payload:
    """Pickles to a call that writes ``marker`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",)


def pickle_payloads(marker: Path) -> dict[str, bytes]:
    """Return blobs that execute code when unpickled: raw pickle and a torch.save archive."""
    buf = io.BytesIO()
    torch.save({"model.weight": _Payload(marker)}, buf)
    return {"a raw pickle": pickle.dumps(_Payload(marker)), "a torch.save archive": buf.getvalue()}


@check(mutates=True, why="unpickling a snapshot executes whatever code it carries")
def check_restore_refuses_pickle(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """restore() and restore_chunked() refuse pickle payloads without executing them."""
    problems = Problems()
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "executed"

        def judge(what: str, action: Callable[[], object]) -> None:
            problem = refusal_problem(model, action, f"{what} carrying a code-execution payload")
            if marker.exists():
                marker.unlink()
                problems.add(f"{what} executed the pickle's payload")
            elif problem:
                problems.add(problem)

        for label, payload in pickle_payloads(marker).items():
            judge(f"restore() of {label}", _restoring(adapter, model, payload))
        if hasattr(adapter, "snapshot_chunked") and capabilities.snapshot_claim(adapter) == "full":
            with _chunked(adapter, model) as root:
                chunk = _data_files(root)[0]
                chunk.write_bytes(pickle_payloads(marker)["a torch.save archive"])
                judge(f"restore_chunked() of a chunked snapshot whose {chunk.name} is a torch.save "
                      "archive", lambda: adapter.restore_chunked(model, str(root)))
    problems.raise_if_any("never unpickle snapshots (use safetensors, or torch.load("
                          "weights_only=True) at the very least) and refuse anything else with a "
                          "clear error")


CHECKS = (
    check_restore_rejects_foreign_snapshot,
    check_restore_rejects_truncated_blob,
    check_restore_rejects_tampered_blob,
    check_restore_chunked_rejects_damaged_chunks,
    check_restore_chunked_rejects_flipped_chunk,
    check_restore_chunked_refuses_escaping_paths,
    check_restore_rejects_dtype_mismatch,
    check_restore_refuses_pickle,
)
