"""Checks that bad snapshots are refused with a clear error and leave the model bit-identical."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pytest_invarlock import capabilities, state
from pytest_invarlock.checks import CheckContext, check
from pytest_invarlock.errors import CheckFailed, CheckNotApplicable


def expect_refusal(model: nn.Module, action: Callable[[], object], what: str) -> None:
    """Require ``action`` to raise a non-empty error and to leave ``model`` bit-identical."""
    before = state.capture(model)
    try:
        action()
    except Exception as exc:
        if not str(exc).strip():
            raise CheckFailed(f"restoring {what} raised {type(exc).__name__} with no message; "
                              "say which file, key or check failed") from None
    else:
        raise CheckFailed(f"restoring {what} succeeded; validate the snapshot (header, names, "
                          "shapes, dtypes, checksums) and raise instead")
    changed = state.diff(model, before)
    if changed:
        raise CheckFailed(f"restoring {what} raised but changed the model first: "
                          f"{'; '.join(changed[:3])}. Validate everything before copying any "
                          "tensor, so a failed restore leaves the model untouched")


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
        shutil.rmtree(path, ignore_errors=True)


def _data_files(root: Path) -> list[Path]:
    """Return the snapshot's files, largest first (data chunks before manifests)."""
    files = [p for p in root.rglob("*") if p.is_file()]
    return sorted(files, key=lambda p: (-p.stat().st_size, p.name))


def _foreign_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return a model of another family and one of this class with one more layer."""
    from pytest_invarlock.fixtures import build_model, catalog

    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    other = next(f for f in catalog().values() if f.config["model_type"] != model_type)
    found = [(f"a {other.family} model", build_model(other))]
    if config is not None and hasattr(config, "num_hidden_layers"):
        settings = config.to_dict()
        settings.pop("layer_types", None)  # sized to the old depth; rebuilt from the new one
        deeper = type(config).from_dict(settings)
        deeper.num_hidden_layers = config.num_hidden_layers + 1
        try:
            other_model = type(model)(deeper).eval()
        except Exception:
            return found
        if _shapes(other_model) != _shapes(model):  # ALBERT shares layers: same state, no test
            found.append((f"{type(model).__name__} with one more layer", other_model))
    return found


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(t.shape) for n, (t, _) in state.named_tensors(model).items()}


@check(mutates=True)
def check_restore_rejects_foreign_snapshot(adapter: Any, model: nn.Module,
                                           ctx: CheckContext) -> None:
    """restore() refuses a snapshot of another architecture, and of this one with another depth."""
    _take(adapter, model)
    for label, foreign in _foreign_models(model):
        blob = adapter.snapshot(foreign)
        expect_refusal(model, lambda blob=blob: adapter.restore(model, blob),
                       f"a snapshot of {label}")


@check(mutates=True)
def check_restore_rejects_truncated_blob(adapter: Any, model: nn.Module,
                                         ctx: CheckContext) -> None:
    """restore() refuses a snapshot cut short anywhere (header, data, last byte)."""
    blob = bytes(_take(adapter, model))
    for cut in (0, 4, len(blob) // 2, len(blob) - 1):
        expect_refusal(model, lambda cut=cut: adapter.restore(model, blob[:cut]),
                       f"a snapshot truncated to {cut} of {len(blob)} bytes")


@check(mutates=True)
def check_restore_rejects_tampered_blob(adapter: Any, model: nn.Module,
                                        ctx: CheckContext) -> None:
    """restore() refuses a snapshot with one flipped byte in its data."""
    blob = bytes(_take(adapter, model))
    for where in (len(blob) * 3 // 4, len(blob) - 1):
        bad = bytearray(blob)
        bad[where] ^= 0xFF
        expect_refusal(model, lambda bad=bad: adapter.restore(model, bytes(bad)),
                       f"a snapshot with byte {where} of {len(blob)} flipped (no checksum?)")


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


@check(mutates=True)
def check_restore_rejects_tampered_chunks(adapter: Any, model: nn.Module,
                                          ctx: CheckContext) -> None:
    """restore_chunked() refuses flipped, truncated, missing or escaping chunks."""
    _need_chunked(adapter)
    with _chunked(adapter, model) as root:
        chunk = _data_files(root)[0]
        original = chunk.read_bytes()
        damaged = {"flipped": bytearray(original), "truncated": original[: len(original) // 2]}
        damaged["flipped"][len(original) * 3 // 4] ^= 0xFF
        for how, data in damaged.items():
            chunk.write_bytes(bytes(data))
            expect_refusal(model, lambda: adapter.restore_chunked(model, str(root)),
                           f"a chunked snapshot whose {chunk.name} was {how}")
        chunk.unlink()
        expect_refusal(model, lambda: adapter.restore_chunked(model, str(root)),
                       f"a chunked snapshot missing {chunk.name}")
        chunk.write_bytes(original)
        with tempfile.TemporaryDirectory(dir=root.parent) as outside:
            for what in _escape_variants(root, Path(outside)):
                expect_refusal(model, lambda: adapter.restore_chunked(model, str(root)), what)


@check(mutates=True)
def check_restore_rejects_dtype_mismatch(adapter: Any, model: nn.Module,
                                         ctx: CheckContext) -> None:
    """restore() refuses a snapshot whose dtypes differ from the model's (e.g. after .half())."""
    if capabilities.backend_moves_devices(adapter):
        raise CheckNotApplicable("the adapter forbids .to() (device_movement_managed_by_backend)")
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


@check(mutates=True)
def check_restore_refuses_pickle(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """restore() and restore_chunked() refuse pickle payloads without executing them."""
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "executed"
        for label, payload in pickle_payloads(marker).items():
            try:
                expect_refusal(model, lambda payload=payload: adapter.restore(model, payload),
                               f"{label} carrying a code-execution payload")
            finally:
                _no_marker(marker, f"restore() of {label}")
        if hasattr(adapter, "snapshot_chunked") and capabilities.snapshot_claim(adapter) == "full":
            with _chunked(adapter, model) as root:
                chunk = _data_files(root)[0]
                chunk.write_bytes(pickle_payloads(marker)["a torch.save archive"])
                try:
                    expect_refusal(model, lambda: adapter.restore_chunked(model, str(root)),
                                   f"a chunked snapshot whose {chunk.name} is a torch.save "
                                   "archive")
                finally:
                    _no_marker(marker, "restore_chunked() of a torch.save chunk")


def _no_marker(marker: Path, what: str) -> None:
    if marker.exists():
        raise CheckFailed(f"{what} executed the pickle's payload; never unpickle snapshots "
                          "(use safetensors, or torch.load(weights_only=True) at the very least)")


CHECKS = (
    check_restore_rejects_foreign_snapshot,
    check_restore_rejects_truncated_blob,
    check_restore_rejects_tampered_blob,
    check_restore_rejects_tampered_chunks,
    check_restore_rejects_dtype_mismatch,
    check_restore_refuses_pickle,
)
