"""Checks that snapshot/restore round-trips are bit-exact: values, dtypes, devices, ties, logits."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pytest_invarlock import state
from pytest_invarlock.checks import CheckContext, check
from pytest_invarlock.errors import CheckFailed, CheckNotApplicable


def _few(problems: list[str]) -> str:
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def roundtrip(model: nn.Module, take: Callable[[], object],
              put: Callable[[object], None], how: str) -> None:
    """Snapshot, perturb every tensor, restore, and require the original bits, ties and logits."""
    before = state.capture(model)
    logits = state.logits(model)
    taken = take()
    state.perturb(model)
    nonempty = sum(1 for saved in before.tensors.values() if saved.value.numel())
    if len(state.diff(model, before)) < nonempty:
        raise RuntimeError("the suite failed to perturb every tensor")  # a suite bug
    put(taken)
    problems = state.diff(model, before)
    if problems:
        raise CheckFailed(f"after {how}, the model is not bit-identical to its state at snapshot "
                          f"time: {_few(problems)}. Store every parameter and every buffer "
                          "(persistent or not) by name and copy them back exactly")
    if not torch.equal(state.bits(state.logits(model)), state.bits(logits)):
        raise CheckFailed(f"after {how}, every tensor matches but the logits differ; restore "
                          "state the forward pass depends on (buffers, attributes)")


def _check_bytes_like(blob: object) -> None:
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise CheckFailed(f"snapshot() returned {type(blob).__name__}; return bytes (or another "
                          "bytes-like buffer) so callers can store and hash it")


@check(mutates=True)
def check_snapshot_roundtrip_bytes(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """restore(snapshot()) after perturbing every parameter and buffer is bit-exact."""

    def take() -> object:
        blob = adapter.snapshot(model)
        _check_bytes_like(blob)
        return blob

    roundtrip(model, take, lambda blob: adapter.restore(model, blob), "snapshot()/restore()")


@check(mutates=True)
def check_snapshot_roundtrip_chunked(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """restore_chunked(snapshot_chunked()) after perturbing everything is bit-exact."""
    if not hasattr(adapter, "snapshot_chunked"):
        raise CheckNotApplicable("adapter has no snapshot_chunked()")
    paths: list[str] = []

    def take() -> object:
        paths.append(adapter.snapshot_chunked(model, prefix="invarlock-check-"))
        return paths[-1]

    try:
        roundtrip(model, take, lambda path: adapter.restore_chunked(model, path),
                  "snapshot_chunked()/restore_chunked()")
    finally:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)


CHECKS = (
    check_snapshot_roundtrip_bytes,
    check_snapshot_roundtrip_chunked,
)
