"""Checks that snapshot/restore round-trips are bit-exact: values, dtypes, devices, ties, logits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pytest_invarlock.errors import CheckFailed, CheckNotApplicable, ClaimNote
from pytest_invarlock.hf_adapter import capabilities, state
from pytest_invarlock.hf_adapter.checks import CheckContext, check, discard_snapshot, summarize


def _few(problems: list[str]) -> str:
    count = f"{len(problems)} differences: " if len(problems) > 1 else ""
    return count + summarize(problems)


def roundtrip(model: nn.Module, take: Callable[[], object],
              put: Callable[[object], None], how: str, claim: str = "full") -> None:
    """Snapshot, perturb every tensor, restore, and judge the result by the adapter's claim.

    ``full`` requires the original bits, ties and logits; ``best_effort`` and ``delegated`` also
    accept a clean refusal (an error, the model untouched); ``none`` requires a clean refusal.
    """
    if claim != "full":
        return _claimed_roundtrip(model, take, put, how, claim)
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


def _claimed_roundtrip(model: nn.Module, take: Callable[[], object],
                       put: Callable[[object], None], how: str, claim: str) -> None:
    before = state.capture(model)
    try:
        taken = take()
    except Exception as exc:
        _clean_refusal(model, before, exc, how, claim)
        return
    state.perturb(model)
    perturbed = state.capture(model)
    try:
        put(taken)
    except Exception as exc:
        _clean_refusal(model, perturbed, exc, how, claim)
        return
    problems = state.diff(model, before)
    if problems:
        raise CheckFailed(f"{how} returned normally but the model is not its original state: "
                          f"{_few(problems)}. Under snapshot_restore={claim!r} a restore is exact "
                          "or raises; it never silently leaves other values behind")
    if claim == "none":
        raise ClaimNote(f"under-claim: {how} round-trips exactly, yet the adapter claims "
                        "snapshot_restore='none'; claim 'full'")


def _clean_refusal(model: nn.Module, expected: state.State, exc: Exception, how: str,
                   claim: str) -> None:
    changed = state.diff(model, expected)
    if changed or not str(exc).strip():
        what = f"changed the model ({_few(changed)})" if changed else "gave no message"
        raise CheckFailed(f"{how} refused ({type(exc).__name__}) but {what}; under "
                          f"snapshot_restore={claim!r} a refusal must say why and touch nothing")


def _check_bytes_like(blob: object) -> None:
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise CheckFailed(f"snapshot() returned {type(blob).__name__}; return bytes (or another "
                          "bytes-like buffer) so callers can store and hash it")


@check(mutates=True, why="an exact round-trip is the protocol's core promise")
def check_snapshot_roundtrip_bytes(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """restore(snapshot()) after perturbing every parameter and buffer is bit-exact."""

    def take() -> object:
        blob = adapter.snapshot(model)
        _check_bytes_like(blob)
        return blob

    roundtrip(model, take, lambda blob: adapter.restore(model, blob), "snapshot()/restore()",
              capabilities.snapshot_claim(adapter))


@check(mutates=True, why="an exact round-trip is the protocol's core promise")
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
                  "snapshot_chunked()/restore_chunked()", capabilities.snapshot_claim(adapter))
    finally:
        for path in paths:
            discard_snapshot(path)


CHECKS = (
    check_snapshot_roundtrip_bytes,
    check_snapshot_roundtrip_chunked,
)
